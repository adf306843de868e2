//! MovieLens (`ratings.csv`, `movies.csv`, and a row-aligned f32 embedding file such as
//! `movies_minilm384.f32`), with the evaluation protocol fixed so that results compare with other
//! implementations:
//!
//! - each rating is a behaviour: `action` = the rating in half stars (1..=10), category = the
//!   movie's first genre, timestamps in milliseconds;
//! - each user's events are ordered by (timestamp, movieId);
//! - a rating is a sample when the same user has at least [`MIN_HISTORY`] events with a strictly
//!   smaller timestamp; its label is `rating >= 4`; its history is exactly those strictly earlier
//!   events (`as_of` = its timestamp, so ratings in the same second are not history for each
//!   other);
//! - the domain of a rating (event and sample) is the release era of the movie, from the year
//!   at the end of its title ([`era_domain`]);
//! - T2 is the 85% quantile of all rating timestamps (linear interpolation, as numpy's default);
//!   samples before T2 train (the latest 10% of them, by time, validate), the rest test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use siren_engine::{AppendOptions, Db, Durability, Event, Item, SemId};

use crate::error::{LabError, Result};
use siren_model::data::{Impression, Splits};

/// Strictly earlier events a rating needs to become a sample.
pub const MIN_HISTORY: usize = 5;
/// Quantile of all timestamps that separates train from test.
pub const TEST_QUANTILE: f64 = 0.85;
/// Share of the training samples, the latest by time, held out for validation.
pub const VALID_SHARE: f64 = 0.10;

#[derive(Debug, Clone)]
pub struct MovieLensPaths {
    pub ratings: PathBuf,
    pub movies: PathBuf,
    pub embeddings: PathBuf,
}

impl MovieLensPaths {
    /// The usual file names inside one folder.
    pub fn in_dir(dir: &Path) -> Self {
        MovieLensPaths {
            ratings: dir.join("ratings.csv"),
            movies: dir.join("movies.csv"),
            embeddings: dir.join("movies_minilm384.f32"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Movie {
    pub id: u64,
    pub title: String,
    pub genres: Vec<String>,
    /// Index of the first genre in [`MovieLens::genres`].
    pub category: u32,
    /// Release year, from the `(YYYY)` that ends the title.
    pub year: Option<u16>,
}

/// The release year at the end of a MovieLens title, `"Heat (1995)"`.
pub fn title_year(title: &str) -> Option<u16> {
    let t = title.trim_end();
    let inner = t.strip_suffix(')')?;
    let open = inner.rfind('(')?;
    let y = &inner[open + 1..];
    if y.len() == 4 && y.bytes().all(|c| c.is_ascii_digit()) {
        y.parse().ok()
    } else {
        None
    }
}

/// Domains of MovieLens ratings: the movie's release era. In ml-latest-small's ratings the
/// shares are about 76% (1990 on, and the few titles without a year), 13% (1980s), 5% (1970s),
/// 4% (1950-1969) and 2% (before 1950): one head domain and a long tail.
pub const ERA_DOMAINS: [&str; 5] = ["1990-", "1980s", "1970s", "1950-1969", "-1949"];

/// [`ERA_DOMAINS`] index of a release year.
pub fn era_domain(year: Option<u16>) -> u16 {
    match year {
        None => 0,
        Some(y) if y >= 1990 => 0,
        Some(y) if y >= 1980 => 1,
        Some(y) if y >= 1970 => 2,
        Some(y) if y >= 1950 => 3,
        Some(_) => 4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating {
    pub user: u64,
    pub movie: u64,
    pub half_stars: u8,
    /// Unix seconds.
    pub ts: i64,
}

/// What the protocol produced, for reports and for checking against the published counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProtocolReport {
    /// T2 in Unix seconds.
    pub t2: f64,
    pub train_samples: usize,
    pub train_users: usize,
    pub valid_samples: usize,
    pub test_samples: usize,
    pub test_users: usize,
    pub test_positive_share: f64,
}

pub struct MovieLens {
    pub movies: Vec<Movie>,
    /// Distinct first genres, in order of first appearance in `movies.csv`.
    pub genres: Vec<String>,
    pub ratings: Vec<Rating>,
    pub dim: usize,
    /// Row-major, one row per movie in `movies` order.
    pub embeddings: Vec<f32>,
}

fn read_csv(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| LabError::io(path, e))?;
    Ok(csv::ReaderBuilder::new().has_headers(true).from_reader(f))
}

fn expect_header(path: &Path, r: &mut csv::Reader<std::fs::File>, want: &[&str]) -> Result<()> {
    let h = r
        .headers()
        .map_err(|e| LabError::input(path, e.to_string()))?;
    let got: Vec<&str> = h.iter().collect();
    if got != want {
        return Err(LabError::input(
            path,
            format!("header is {got:?}, expected {want:?}"),
        ));
    }
    Ok(())
}

impl MovieLens {
    pub fn load(paths: &MovieLensPaths) -> Result<MovieLens> {
        let (movies, genres) = Self::load_movies(&paths.movies)?;
        let ratings = Self::load_ratings(&paths.ratings)?;
        let (dim, embeddings) = Self::load_embeddings(&paths.embeddings, movies.len())?;
        Ok(MovieLens {
            movies,
            genres,
            ratings,
            dim,
            embeddings,
        })
    }

    /// Replaces the embeddings by their first `dim` principal components rounded to int8, as
    /// the 128-d int8 vectors of MUSE's reference data ([`crate::reduce::pca_int8`]).
    pub fn reduce_embeddings(&mut self, dim: usize) -> Result<()> {
        self.embeddings = crate::reduce::pca_int8(&self.embeddings, self.dim, dim)?;
        self.dim = dim;
        Ok(())
    }

    fn load_movies(path: &Path) -> Result<(Vec<Movie>, Vec<String>)> {
        let mut r = read_csv(path)?;
        expect_header(path, &mut r, &["movieId", "title", "genres"])?;
        let mut genre_index: HashMap<String, u32> = HashMap::new();
        let mut genres = Vec::new();
        let mut movies = Vec::new();
        for (line, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| LabError::input(path, e.to_string()))?;
            let bad = |what: &str| LabError::input(path, format!("row {}: {what}", line + 2));
            if rec.len() != 3 {
                return Err(bad("expected 3 fields"));
            }
            let id: u64 = rec[0]
                .parse()
                .map_err(|_| bad("movieId is not an integer"))?;
            let gs: Vec<String> = rec[2].split('|').map(str::to_string).collect();
            let first = gs[0].clone();
            let next = genre_index.len() as u32;
            let category = *genre_index.entry(first.clone()).or_insert_with(|| {
                genres.push(first);
                next
            });
            movies.push(Movie {
                id,
                title: rec[1].to_string(),
                genres: gs,
                category,
                year: title_year(&rec[1]),
            });
        }
        Ok((movies, genres))
    }

    fn load_ratings(path: &Path) -> Result<Vec<Rating>> {
        let mut r = read_csv(path)?;
        expect_header(path, &mut r, &["userId", "movieId", "rating", "timestamp"])?;
        let mut out = Vec::new();
        for (line, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| LabError::input(path, e.to_string()))?;
            let bad = |what: &str| LabError::input(path, format!("row {}: {what}", line + 2));
            if rec.len() != 4 {
                return Err(bad("expected 4 fields"));
            }
            let rating: f64 = rec[2].parse().map_err(|_| bad("rating is not a number"))?;
            let half = rating * 2.0;
            if !(1.0..=10.0).contains(&half) || half.fract() != 0.0 {
                return Err(bad("rating is not 0.5 to 5.0 in half stars"));
            }
            out.push(Rating {
                user: rec[0]
                    .parse()
                    .map_err(|_| bad("userId is not an integer"))?,
                movie: rec[1]
                    .parse()
                    .map_err(|_| bad("movieId is not an integer"))?,
                half_stars: half as u8,
                ts: rec[3]
                    .parse()
                    .map_err(|_| bad("timestamp is not an integer"))?,
            });
        }
        Ok(out)
    }

    fn load_embeddings(path: &Path, rows: usize) -> Result<(usize, Vec<f32>)> {
        let bytes = std::fs::read(path).map_err(|e| LabError::io(path, e))?;
        if rows == 0 || bytes.len() % (rows * 4) != 0 {
            return Err(LabError::input(
                path,
                format!(
                    "{} bytes is not {rows} rows of little-endian f32",
                    bytes.len()
                ),
            ));
        }
        let dim = bytes.len() / (rows * 4);
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(LabError::input(
                path,
                format!("value {i} (row {}) is not finite", i / dim),
            ));
        }
        Ok((dim, v))
    }

    pub fn embedding(&self, row: usize) -> &[f32] {
        &self.embeddings[row * self.dim..(row + 1) * self.dim]
    }

    /// Catalog items, with SemIDs when given (one per movie, in `movies` order).
    pub fn items(&self, semids: Option<&[SemId]>) -> Vec<Item> {
        self.movies
            .iter()
            .enumerate()
            .map(|(i, m)| Item {
                id: m.id,
                category: m.category,
                semid: semids.map(|s| s[i]),
                embedding: Some(self.embedding(i).to_vec()),
            })
            .collect()
    }

    /// Every rating as an event, ordered by (user, timestamp, movieId): appended in this order,
    /// the engine keeps (timestamp, movieId) order within a user, ties included.
    pub fn events(&self) -> Vec<Event> {
        let domain = self.domains();
        let mut evs: Vec<Event> = self
            .ratings
            .iter()
            .map(|r| Event {
                user: r.user,
                ts: r.ts * 1000,
                item: r.movie,
                action: r.half_stars,
                domain: domain.get(&r.movie).copied().unwrap_or(0),
            })
            .collect();
        evs.sort_by_key(|e| (e.user, e.ts, e.item));
        evs
    }

    /// The protocol's samples and split.
    /// Each movie's [`era_domain`].
    pub fn domains(&self) -> HashMap<u64, u16> {
        self.movies
            .iter()
            .map(|m| (m.id, era_domain(m.year)))
            .collect()
    }

    pub fn impressions(&self) -> (Splits, ProtocolReport) {
        let domain = self.domains();
        let mut all_ts: Vec<i64> = self.ratings.iter().map(|r| r.ts).collect();
        all_ts.sort_unstable();
        let t2 = quantile_linear(&all_ts, TEST_QUANTILE);
        let mut by_user: HashMap<u64, Vec<&Rating>> = HashMap::new();
        for r in &self.ratings {
            by_user.entry(r.user).or_default().push(r);
        }
        let mut train = Vec::new();
        let mut test = Vec::new();
        for evs in by_user.values_mut() {
            evs.sort_by_key(|r| (r.ts, r.movie));
            for (i, r) in evs.iter().enumerate() {
                // Events before position i with a strictly smaller timestamp.
                let earlier = evs[..i].partition_point(|e| e.ts < r.ts);
                if earlier < MIN_HISTORY {
                    continue;
                }
                let imp = Impression {
                    user: r.user,
                    item: r.movie,
                    ts: r.ts * 1000,
                    label: if r.half_stars >= 8 { 1.0 } else { 0.0 },
                    domain: domain.get(&r.movie).copied().unwrap_or(0),
                };
                if (r.ts as f64) < t2 {
                    train.push(imp);
                } else {
                    test.push(imp);
                }
            }
        }
        let key = |i: &Impression| (i.ts, i.user, i.item);
        train.sort_by_key(key);
        test.sort_by_key(key);
        let users = |v: &[Impression]| {
            v.iter()
                .map(|i| i.user)
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        let report = ProtocolReport {
            t2,
            train_samples: train.len(),
            train_users: users(&train),
            valid_samples: (train.len() as f64 * VALID_SHARE) as usize,
            test_samples: test.len(),
            test_users: users(&test),
            test_positive_share: test.iter().map(|i| f64::from(i.label)).sum::<f64>()
                / test.len().max(1) as f64,
        };
        let valid = train.split_off(train.len() - report.valid_samples);
        (Splits { train, valid, test }, report)
    }

    /// Load the catalog and every rating into `db` (whose `embedding_dim` must be `self.dim`).
    pub fn import(&self, db: &Db, semids: Option<&[SemId]>) -> Result<()> {
        for chunk in self.items(semids).chunks(5_000) {
            db.upsert_items(chunk, Durability::Buffered)?;
        }
        let opts = AppendOptions {
            durability: Durability::Buffered,
            source: None,
        };
        for chunk in self.events().chunks(20_000) {
            db.append(chunk, &opts)?;
        }
        db.flush()?;
        Ok(())
    }
}

/// The `q` quantile of sorted values with linear interpolation between the two nearest ranks
/// (numpy's default).
pub fn quantile_linear(sorted: &[i64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    sorted[lo] as f64 + frac * (sorted[hi] - sorted[lo]) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn shared_movielens() -> Option<MovieLensPaths> {
        let dir = std::env::var_os("SIREN_SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
            })
            .join("movielens-latest-small");
        if dir.join("ratings.csv").exists() {
            Some(MovieLensPaths::in_dir(&dir))
        } else {
            eprintln!(
                "skipped: MovieLens not found at {} (set SIREN_SHARED_DATA)",
                dir.display()
            );
            None
        }
    }

    #[test]
    fn quantile_matches_numpy() {
        assert_eq!(quantile_linear(&[1, 2, 3, 4], 0.5), 2.5);
        assert_eq!(quantile_linear(&[10], 0.85), 10.0);
        assert_eq!(quantile_linear(&[0, 100], 0.85), 85.0);
    }

    #[test]
    fn protocol_counts_match_the_published_ones() {
        let Some(paths) = shared_movielens() else {
            return;
        };
        let ml = MovieLens::load(&paths).unwrap();
        assert_eq!(
            (ml.ratings.len(), ml.movies.len(), ml.dim),
            (100_836, 9_742, 384)
        );
        let (splits, rep) = ml.impressions();
        assert_eq!(rep.t2, 1_479_542_661.5);
        assert_eq!((rep.train_samples, rep.train_users), (82_698, 544));
        assert_eq!((rep.test_samples, rep.test_users), (14_794, 96));
        assert!(
            (rep.test_positive_share - 0.416).abs() < 0.0005,
            "{}",
            rep.test_positive_share
        );
        assert_eq!(splits.valid.len(), 8_269);
        assert_eq!(splits.train.len() + splits.valid.len(), 82_698);
        // Validation is the latest part of training.
        assert!(splits.train.last().unwrap().ts <= splits.valid[0].ts);
        let t2_ms = rep.t2 * 1000.0;
        assert!(splits.valid.iter().all(|i| (i.ts as f64) < t2_ms));
        assert!(splits.test.iter().all(|i| (i.ts as f64) >= t2_ms));
    }

    #[test]
    fn history_in_the_engine_is_exactly_the_strictly_earlier_ratings() {
        let Some(paths) = shared_movielens() else {
            return;
        };
        let ml = MovieLens::load(&paths).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            siren_engine::Options {
                embedding_dim: ml.dim as u32,
                auto_compact: None,
                ..Default::default()
            },
        )
        .unwrap();
        ml.import(&db, None).unwrap();
        db.compact().unwrap();
        let (splits, _) = ml.impressions();
        let snap = db.snapshot();
        let mut by_user: HashMap<u64, Vec<&Rating>> = HashMap::new();
        for r in &ml.ratings {
            by_user.entry(r.user).or_default().push(r);
        }
        for imp in splits
            .test
            .iter()
            .step_by(97)
            .chain(splits.train.iter().step_by(997))
        {
            let hist = snap
                .read(imp.user, siren_engine::ReadRange::as_of(imp.ts))
                .unwrap();
            let mut want: Vec<&Rating> = by_user[&imp.user]
                .iter()
                .copied()
                .filter(|r| r.ts * 1000 < imp.ts)
                .collect();
            want.sort_by_key(|r| (r.ts, r.movie));
            assert!(hist.len() >= MIN_HISTORY);
            let got: Vec<(i64, u64, u8)> = hist
                .iter()
                .map(|e| (e.ts / 1000, e.item, e.action))
                .collect();
            let want: Vec<(i64, u64, u8)> =
                want.iter().map(|r| (r.ts, r.movie, r.half_stars)).collect();
            assert_eq!(got, want);
            assert!(
                hist.iter().all(|e| e.ts < imp.ts),
                "no event at or after the sample's time"
            );
        }
    }

    #[test]
    fn malformed_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ratings.csv");
        std::fs::write(&p, "userId,movieId,rating,timestamp\n1,2,7.5,100\n").unwrap();
        let e = MovieLens::load_ratings(&p).unwrap_err();
        assert!(e.to_string().contains("row 2"), "{e}");
        std::fs::write(&p, "user,movie\n1,2\n").unwrap();
        assert!(matches!(
            MovieLens::load_ratings(&p),
            Err(LabError::Input { .. })
        ));
        let e = dir.path().join("e.f32");
        std::fs::write(&e, [0u8; 10]).unwrap();
        assert!(MovieLens::load_embeddings(&e, 3).is_err());
    }
}
