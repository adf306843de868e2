//! Siren's own CSV tables of a dataset directory ([`crate::dataset`]): the labelled impressions
//! and two side tables, item attributes and user profiles. Numbers only, no quoting, a fixed
//! header line; `dataset.json` keeps the CRC32C of each file, checked before decoding. The
//! decoders take bytes, so that they can be fuzzed.
//!
//! | file | header | rows |
//! |---|---|---|
//! | `impressions.csv` | `split,user,item,ts,label,domain` | one impression; split `train`, `valid` or `test` |
//! | `item_attributes.csv` | `item,attr_213,attr_214` | an item's attribute ids, ascending by item |
//! | `user_profiles.csv` | `user,profile_1,..,profile_5` | a user's profile ids, ascending by user |
//!
//! Each side table starts with a magic line naming the file kind and its format version
//! (`siren-item-attributes 1`, `siren-user-profiles 1`) before the header, so a file is known
//! for what it is on its own; another version of the kind is refused with
//! [`ModelError::UnsupportedVersion`].
//!
//! The side tables hold ids of the Taobao-MM format (its item columns `213`, `214` and user
//! columns `130_1`..`130_5`, bit-cast to `u64`); 0 means unknown, and a row whose ids are all 0
//! is not stored.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

use crate::data::{Impression, Splits};
use crate::error::{ModelError, Result};

pub const IMPRESSIONS_HEADER: &str = "split,user,item,ts,label,domain";
pub const ITEM_ATTRIBUTES_HEADER: &str = "item,attr_213,attr_214";
pub const USER_PROFILES_HEADER: &str = "user,profile_1,profile_2,profile_3,profile_4,profile_5";

/// Format version of the side tables, written on their magic line.
pub const SIDE_TABLE_VERSION: u32 = 1;
const ITEM_ATTRIBUTES_MAGIC: &str = "siren-item-attributes";
const USER_PROFILES_MAGIC: &str = "siren-user-profiles";

/// Attribute ids of items (Taobao-MM `213`, `214`), by item id.
pub type ItemAttributes = HashMap<u64, [u64; 2]>;

/// Profile ids of users (Taobao-MM `130_1`..`130_5`), by user id.
pub type UserProfiles = HashMap<u64, [u64; 5]>;

pub fn encode_impressions(s: &Splits) -> Vec<u8> {
    let mut w = String::new();
    w.push_str(IMPRESSIONS_HEADER);
    w.push('\n');
    for (name, v) in [("train", &s.train), ("valid", &s.valid), ("test", &s.test)] {
        for i in v {
            let (u, it, ts, l, d) = (i.user, i.item, i.ts, i.label, i.domain);
            writeln!(w, "{name},{u},{it},{ts},{l},{d}").expect("writing to a String");
        }
    }
    w.into_bytes()
}

pub fn decode_impressions(bytes: &[u8], path: &Path) -> Result<Splits> {
    let mut s = Splits::default();
    for row in rows(bytes, path, IMPRESSIONS_HEADER, 0)? {
        let (line, f) = row?;
        let imp = Impression {
            user: field(f[1], path, line)?,
            item: field(f[2], path, line)?,
            ts: field(f[3], path, line)?,
            label: field(f[4], path, line)?,
            domain: field(f[5], path, line)?,
        };
        match f[0] {
            "train" => s.train.push(imp),
            "valid" => s.valid.push(imp),
            "test" => s.test.push(imp),
            _ => return Err(malformed(path, line)),
        }
    }
    Ok(s)
}

pub fn encode_item_attributes(m: &ItemAttributes) -> Vec<u8> {
    encode_id_rows(ITEM_ATTRIBUTES_MAGIC, ITEM_ATTRIBUTES_HEADER, m)
}

pub fn decode_item_attributes(bytes: &[u8], path: &Path) -> Result<ItemAttributes> {
    decode_id_rows(bytes, path, ITEM_ATTRIBUTES_MAGIC, ITEM_ATTRIBUTES_HEADER)
}

pub fn encode_user_profiles(m: &UserProfiles) -> Vec<u8> {
    encode_id_rows(USER_PROFILES_MAGIC, USER_PROFILES_HEADER, m)
}

pub fn decode_user_profiles(bytes: &[u8], path: &Path) -> Result<UserProfiles> {
    decode_id_rows(bytes, path, USER_PROFILES_MAGIC, USER_PROFILES_HEADER)
}

/// The magic line with the version, `header`, then one line per key in ascending order: the key
/// and its `N` ids. Rows whose ids are all 0 (unknown) are left out.
fn encode_id_rows<const N: usize>(
    magic: &str,
    header: &str,
    m: &HashMap<u64, [u64; N]>,
) -> Vec<u8> {
    let mut keys: Vec<u64> = m
        .iter()
        .filter(|(_, ids)| ids.iter().any(|&v| v != 0))
        .map(|(&k, _)| k)
        .collect();
    keys.sort_unstable();
    let mut w = String::with_capacity(64 + keys.len() * (N + 1) * 12);
    writeln!(w, "{magic} {SIDE_TABLE_VERSION}").expect("writing to a String");
    w.push_str(header);
    w.push('\n');
    for k in keys {
        write!(w, "{k}").expect("writing to a String");
        for v in &m[&k] {
            write!(w, ",{v}").expect("writing to a String");
        }
        w.push('\n');
    }
    w.into_bytes()
}

fn decode_id_rows<const N: usize>(
    bytes: &[u8],
    path: &Path,
    magic: &'static str,
    header: &str,
) -> Result<HashMap<u64, [u64; N]>> {
    let body = check_magic(bytes, path, magic)?;
    let mut out = HashMap::new();
    for row in rows(body, path, header, 1)? {
        let (line, f) = row?;
        let key: u64 = field(f[0], path, line)?;
        let mut ids = [0u64; N];
        for (id, s) in ids.iter_mut().zip(&f[1..]) {
            *id = field(s, path, line)?;
        }
        if out.insert(key, ids).is_some() {
            return Err(ModelError::input(
                path,
                format!("row {line}: id {key} appears twice"),
            ));
        }
    }
    Ok(out)
}

/// The bytes after the magic line `<magic> <version>`, which must name this kind and version.
fn check_magic<'a>(bytes: &'a [u8], path: &Path, magic: &'static str) -> Result<&'a [u8]> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let first = std::str::from_utf8(&bytes[..end]).unwrap_or("");
    let version = first
        .strip_prefix(magic)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| {
            ModelError::input(
                path,
                format!("not a Siren {magic} table (no `{magic}` line)"),
            )
        })?;
    match version.trim_end_matches('\r').parse::<u32>() {
        Ok(SIDE_TABLE_VERSION) => Ok(&bytes[(end + 1).min(bytes.len())..]),
        Ok(found) => Err(ModelError::UnsupportedVersion {
            path: path.to_path_buf(),
            what: magic,
            found,
            supported: SIDE_TABLE_VERSION,
        }),
        Err(_) => Err(ModelError::input(
            path,
            format!("bad version on the `{magic}` line"),
        )),
    }
}

/// The data rows of a table, each split into as many fields as `header` has, with its line
/// number in the file (1-based, after `lines_before` lines already read) for messages; the text
/// must be UTF-8 and start with `header`.
fn rows<'a>(
    bytes: &'a [u8],
    path: &'a Path,
    header: &str,
    lines_before: usize,
) -> Result<impl Iterator<Item = Result<(usize, Vec<&'a str>)>> + 'a> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ModelError::input(path, "the table is not UTF-8"))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first)) if first == header => {}
        _ => {
            return Err(ModelError::input(
                path,
                format!("the table does not start with the header `{header}`"),
            ))
        }
    }
    let width = header.split(',').count();
    Ok(lines.map(move |(i, rec)| {
        let f: Vec<&str> = rec.split(',').collect();
        if f.len() == width {
            Ok((lines_before + i + 1, f))
        } else {
            Err(malformed(path, lines_before + i + 1))
        }
    }))
}

fn field<T: FromStr>(s: &str, path: &Path, line: usize) -> Result<T> {
    s.parse().map_err(|_| malformed(path, line))
}

fn malformed(path: &Path, line: usize) -> ModelError {
    ModelError::input(path, format!("row {line}: malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.csv")
    }

    #[test]
    fn side_tables_round_trip_sorted_without_unknown_rows() {
        let attrs: ItemAttributes = [(9, [1, 2]), (3, [0, u64::MAX]), (5, [0, 0])].into();
        let bytes = encode_item_attributes(&attrs);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            format!(
                "siren-item-attributes 1\n{ITEM_ATTRIBUTES_HEADER}\n3,0,{}\n9,1,2\n",
                u64::MAX
            )
        );
        let back = decode_item_attributes(&bytes, p()).unwrap();
        assert_eq!(back, [(9, [1, 2]), (3, [0, u64::MAX])].into());
        let profiles: UserProfiles = [(1, [1, 2, 3, 4, 5]), (2, [0, 0, 0, 0, 7])].into();
        let back = decode_user_profiles(&encode_user_profiles(&profiles), p()).unwrap();
        assert_eq!(back, profiles);
        let empty = encode_user_profiles(&UserProfiles::new());
        assert!(decode_user_profiles(&empty, p()).unwrap().is_empty());
    }

    #[test]
    fn malformed_tables_are_input_errors_naming_the_row() {
        let m = "siren-item-attributes 1";
        let h = ITEM_ATTRIBUTES_HEADER;
        for (text, needle) in [
            (String::new(), "siren-item-attributes"),
            (format!("{h}\n1,2,3\n"), "siren-item-attributes"),
            (
                "siren-user-profiles 1\nuser\n".to_string(),
                "siren-item-attributes",
            ),
            ("siren-item-attributes x\n".to_string(), "version"),
            (format!("{m}\n"), "header"),
            (format!("{m}\nitem,attr\n1,2\n"), "header"),
            (format!("{m}\n{h}\n1,2\n"), "row 3"),
            (format!("{m}\n{h}\n1,2,3\n4,x,6\n"), "row 4"),
            (format!("{m}\n{h}\n1,2,-3\n"), "row 3"),
            (format!("{m}\n{h}\n1,2,3\n1,4,5\n"), "twice"),
        ] {
            match decode_item_attributes(text.as_bytes(), p()) {
                Err(ModelError::Input { detail, .. }) => {
                    assert!(detail.contains(needle), "{text:?}: {detail}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        match decode_item_attributes(format!("siren-item-attributes 2\n{h}\n").as_bytes(), p()) {
            Err(ModelError::UnsupportedVersion { found: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(decode_user_profiles(&[0xff, 0xfe], p()).is_err());
        let bad_split = format!("{IMPRESSIONS_HEADER}\nlater,1,2,3,1,0\n");
        assert!(decode_impressions(bad_split.as_bytes(), p()).is_err());
    }

    #[test]
    fn impressions_round_trip() {
        let imp = |user, label| Impression {
            user,
            item: user.wrapping_mul(10),
            ts: -5 + user as i64,
            label,
            domain: user as u16,
        };
        let s = Splits {
            train: vec![imp(1, 1.0), imp(2, 0.0)],
            valid: vec![imp(3, 0.0)],
            test: vec![imp(u64::MAX, 1.0)],
        };
        let back = decode_impressions(&encode_impressions(&s), p()).unwrap();
        assert_eq!(
            (back.train, back.valid, back.test),
            (s.train, s.valid, s.test)
        );
    }
}
