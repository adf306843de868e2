//! The CSV tables of a dataset directory: impressions, item attributes and user profiles. Any
//! bytes decode to a table or an error; a decoded side table encodes and decodes to itself.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use siren_model::tables;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("t.csv");
    let _ = tables::decode_impressions(data, p);
    if let Ok(a) = tables::decode_item_attributes(data, p) {
        let again = tables::decode_item_attributes(&tables::encode_item_attributes(&a), p);
        // Rows of all-zero ids are not written; everything else comes back.
        let mut a = a;
        a.retain(|_, ids| ids.iter().any(|&v| v != 0));
        assert_eq!(again.ok(), Some(a));
    }
    if let Ok(u) = tables::decode_user_profiles(data, p) {
        let again = tables::decode_user_profiles(&tables::encode_user_profiles(&u), p);
        let mut u = u;
        u.retain(|_, ids| ids.iter().any(|&v| v != 0));
        assert_eq!(again.ok(), Some(u));
    }
});
