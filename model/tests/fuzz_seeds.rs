//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`) from real structures:
//! segment files and user entries of a compacted database, column chunks, bitmaps, records, a
//! codebook, a checkpoint config and HTTP bodies. Run when a format changes:
//!
//! ```sh
//! cargo test -p siren-model --test fuzz_seeds -- --ignored
//! ```

mod common;

use std::path::{Path, PathBuf};

use siren_engine::format::{
    encode_config, encode_item, encode_location, encode_manifest, encode_pending, encode_source,
    encode_time, write_chunk, Config, Ev, ItemRecord, Location, Manifest, Segment, SegmentInfo,
};
use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, SemId};
use siren_model::semid::{Codebook, RqKmeansConfig};
use siren_model::train::{train, TrainConfig};

fn corpus(target: &str) -> PathBuf {
    let root = std::env::var_os("SIREN_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"));
    let d = root.join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).unwrap();
}

#[test]
#[ignore = "writes the fuzz seed corpora; run by hand"]
fn write_fuzz_seeds() {
    // A database with a few users of different lengths, compacted into one segment.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            embedding_dim: 4,
            semid_levels: 2,
            semid_codebook_size: 8,
            block_events: 16,
            auto_compact: None,
            ..Options::default()
        },
    )
    .unwrap();
    let items: Vec<Item> = (0..40u64)
        .map(|i| Item {
            id: i,
            category: (i % 5) as u32,
            semid: Some(SemId::new(&[(i % 8) as u16, (i / 8 % 8) as u16]).unwrap()),
            embedding: Some(vec![i as f32, 1.0, -(i as f32) / 3.0, 0.5]),
        })
        .collect();
    db.upsert_items(&items, Durability::Sync).unwrap();
    // User 4 is long enough for the inverted layout (position lists).
    for (u, n) in [(1u64, 5usize), (2, 40), (3, 300), (4, 4_500)] {
        let evs: Vec<Event> = (0..n)
            .map(|k| Event {
                user: u,
                ts: 1_000 + (k as i64) * 37 - (k as i64 % 3),
                item: (k as u64 * 7 + u) % 40,
                action: (k % 4) as u8,
                domain: (k % 2) as u16,
            })
            .collect();
        db.append(&evs, &AppendOptions::default()).unwrap();
    }
    db.compact().unwrap();
    drop(db);
    let seg_path = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let bytes = std::fs::read(&seg_path).unwrap();
    // The fuzz target opens the file under id 1.
    let id = u64::from_str_radix(seg_path.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    let mut as_one = bytes.clone();
    for off in [16usize, as_one.len() - 12] {
        as_one[off..off + 8].copy_from_slice(&1u64.to_le_bytes());
    }
    put("segment_file", "four_users.seg", &as_one);
    let seg = Segment::open(&seg_path, id).unwrap();
    for i in 0..seg.len() {
        let r = seg.record(i);
        let entry = &bytes[r.offset as usize..r.offset as usize + r.len as usize];
        put("user_entry", &format!("user{}.entry", r.user), entry);
    }

    // Version-2 column blocks: [n u16][first ts i64][block]; position lists:
    // [c u16][u - 1 u16][offset u8][kind u8][bytes].
    let n = 200usize;
    let bts: Vec<i64> = (0..n as i64)
        .scan(1_700_000_000_000i64, |t, k| {
            *t += 1000 * (k % 3);
            Some(*t)
        })
        .collect();
    let action: Vec<u32> = (0..n as u32).map(|k| u32::from(k % 9 == 0)).collect();
    for (name, domain) in [
        ("sparse_constant", vec![0u32; n]),
        ("packed", (0..n as u32).map(|k| k % 5).collect()),
    ] {
        let mut seed = (n as u16).to_le_bytes().to_vec();
        seed.extend_from_slice(&bts[0].to_le_bytes());
        siren_engine::format::encode_block(&bts, &action, &domain, &mut seed);
        put("column_block", name, &seed);
    }
    let values: Vec<u32> = (0..300u32).map(|k| k * 7 + k % 3).collect();
    let mut bits = siren_engine::format::BitWriter::default();
    siren_engine::format::encode_ef(&values, 2_200, &mut bits);
    let mut seed = 300u16.to_le_bytes().to_vec();
    seed.extend_from_slice(&2_199u16.to_le_bytes());
    seed.extend_from_slice(&[0, 0]);
    seed.extend_from_slice(&bits.into_bytes());
    put("position_lists", "one_list", &seed);

    // Column chunks (format version 1): [selector][n u16][max width][chunk].
    let ts: Vec<i64> = (0..100)
        .map(|k| 1_700_000_000_000 + k * 1234 - k % 7)
        .collect();
    let mut raw = Vec::new();
    encode_time(&ts, &mut raw);
    for (name, level) in [("time_raw", 0), ("time_zstd", 3)] {
        let mut chunk = vec![0u8, 100, 0, 32];
        write_chunk(&mut chunk, &raw, level);
        put("column_chunk", name, &chunk);
    }
    let mut packed = vec![1u8, 100, 0, 8];
    let vals: Vec<u32> = (0..100).map(|k| k % 13).collect();
    siren_engine::format::encode_packed(&vals, &mut packed);
    put("column_chunk", "packed", &packed);
    let mut dict = vec![2u8, 100, 0, 32];
    siren_engine::format::encode_dict(&(0..100).map(|k| k * 3).collect::<Vec<u32>>(), &mut dict);
    put("column_chunk", "dict", &dict);

    // Bitmaps as the prefix index stores them.
    put(
        "prefix_index",
        "bitmap",
        &roaring_bitmap(&[1, 2, 3, 1000, 65_536, 70_000]),
    );

    // Write-path, manifest and catalog records.
    let evs: Vec<Ev> = (0..10)
        .map(|k| Ev {
            ts: 10 * k,
            item: k as u64,
            action: 1,
            domain: 0,
        })
        .collect();
    put("pending_record", "ten_events", &encode_pending(&evs));
    put(
        "manifest",
        "two_segments",
        &encode_manifest(&Manifest {
            next_segment_id: 9,
            compacted_seq: 77,
            segments: vec![
                SegmentInfo {
                    id: 3,
                    file_len: 4096,
                    needs_erase: false,
                },
                SegmentInfo {
                    id: 8,
                    file_len: 100,
                    needs_erase: true,
                },
            ],
        }),
    );
    let with = |sel: u8, b: Vec<u8>| [vec![sel], b].concat();
    put(
        "catalog_record",
        "item",
        &with(
            0,
            encode_item(&ItemRecord {
                internal: 5,
                category: 2,
                semid: Some(SemId::new(&[1, 2]).unwrap()),
                semid_gen: 3,
                embedding: Some((0.01, vec![1, -2, 3, 127])),
                stub: false,
            }),
        ),
    );
    put(
        "catalog_record",
        "location",
        &with(
            1,
            encode_location(&Location {
                segment: 1,
                offset: 28,
                len: 500,
                n_events: 40,
            }),
        ),
    );
    put(
        "catalog_record",
        "config",
        &with(
            2,
            encode_config(&Config {
                embedding_dim: 64,
                semid_levels: 3,
                semid_codebook_size: 256,
            }),
        ),
    );
    put("catalog_record", "source", &with(3, encode_source(42)));
    put(
        "catalog_record",
        "watermark",
        &with(
            5,
            siren_engine::format::encode_watermark(&siren_engine::format::Watermark {
                generation: 3,
                durable_writes: 99,
            }),
        ),
    );
    put(
        "catalog_record",
        "generation",
        &with(6, siren_engine::format::encode_generation(3)),
    );
    put(
        "catalog_record",
        "writes",
        &with(7, siren_engine::format::encode_writes(99)),
    );

    // A codebook and a checkpoint config.
    let x: Vec<f32> = (0..200 * 4)
        .map(|i| ((i * 37 % 101) as f32).sin())
        .collect();
    let cb = Codebook::fit(
        &x,
        4,
        &RqKmeansConfig {
            levels: 2,
            codebook_size: 4,
            ..RqKmeansConfig::default()
        },
    )
    .unwrap();
    put("codebook", "two_levels", &cb.encode());
    let (_data_dir, data) = common::small();
    // Then a version-4 configuration with the two model switches on, and a version-5 one of
    // MUSE's reference network.
    let mut switched = common::cfg("siren-hard");
    switched.no_user_id = true;
    switched.no_mm_target = true;
    let configs = ["din", "siren-hard", "din+crocodile-m2", "siren-hard-ctr"]
        .map(|name| (name, common::cfg(name)))
        .into_iter()
        .chain([
            ("siren-hard-no-user-id-no-mm-target", switched),
            (
                "muse-reference-net",
                common::cfg("muse").with_reference_net(),
            ),
        ]);
    for (name, cfg) in configs {
        let t = train(
            &cfg,
            &TrainConfig {
                epochs: 1,
                ..TrainConfig::default()
            },
            &data,
        )
        .unwrap();
        let ck = tempfile::tempdir().unwrap();
        t.save(ck.path(), &data.vocabs, data.levels).unwrap();
        put(
            "model_config",
            name,
            &std::fs::read(ck.path().join("config.json")).unwrap(),
        );
    }

    // HTTP bodies: [route selector][body or path tail].
    let http: [(u8, &str); 10] = [
        (
            0,
            r#"{"user": 1, "candidates": [1, 2, 3], "gsu": "soft", "explain": true}"#,
        ),
        (1, r#"{"user": 1, "mode": "hard", "k": 5, "item": 3}"#),
        (
            1,
            r#"{"user": 1, "mode": "soft", "k": 5, "embedding": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}"#,
        ),
        (
            2,
            r#"{"events": [{"user": 1, "ts": 5, "item": 3, "action": 1}], "durability": "buffered"}"#,
        ),
        (
            3,
            r#"{"items": [{"id": 9, "category": 1, "embedding": [1, 2, 3, 4, 5, 6, 7, 8]}]}"#,
        ),
        (4, r#"{}"#),
        (5, r#"{"name": "snap-1"}"#),
        (7, "1/events?limit=5&as_of=100"),
        (8, "2"),
        (9, "3"),
    ];
    for (i, (sel, body)) in http.iter().enumerate() {
        put(
            "http_bodies",
            &format!("req{i}"),
            &with(*sel, body.as_bytes().to_vec()),
        );
    }
}

fn roaring_bitmap(values: &[u32]) -> Vec<u8> {
    // The roaring "no run" serialisation of `values` (all in one or two containers).
    let mut by_key: std::collections::BTreeMap<u16, Vec<u16>> = Default::default();
    for &v in values {
        by_key.entry((v >> 16) as u16).or_default().push(v as u16);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&12346u32.to_le_bytes());
    out.extend_from_slice(&(by_key.len() as u32).to_le_bytes());
    for (k, vs) in &by_key {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&((vs.len() - 1) as u16).to_le_bytes());
    }
    let mut offset = 8 + by_key.len() * 8;
    for vs in by_key.values() {
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += vs.len() * 2;
    }
    for vs in by_key.values() {
        for v in vs {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}
