//! SemIDs for items that arrive without one: the HTTP write path and the JSON-lines importer
//! both give them the served codebook's SemID of their embedding.

use siren_engine::Item;
use siren_model::semid::{unit_length, Codebook};

/// Give each item that has an embedding of the codebook's dimension but no SemID the
/// codebook's SemID for it; returns how many were assigned. Assignment is on the unit-length
/// embedding (similarity in Siren is cosine), so scale does not change a SemID.
pub fn assign_missing(codebook: &Codebook, items: &mut [Item]) -> usize {
    let mut n = 0;
    for it in items.iter_mut() {
        if let (None, Some(e)) = (&it.semid, &it.embedding) {
            if e.len() == codebook.dim() {
                let x: Vec<f32> = unit_length(e).collect();
                it.semid = Some(codebook.assign(&x));
                n += 1;
            }
        }
    }
    n
}
