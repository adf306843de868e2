use siren_benches::fixture;
use siren_engine::ReadRange;
fn main() {
    let which = std::env::args().nth(1).unwrap();
    let f = fixture(1, 100_000, 100_000, 128);
    let snap = f.db.snapshot();
    let u = f.users[0];
    let s = f.catalog.items[997].semid.unwrap();
    let e = f.catalog.items[997].embedding.clone().unwrap();
    for _ in 0..20 {
        match which.as_str() {
            "read" => {
                snap.read(u, ReadRange::all()).unwrap();
            }
            "hard" => {
                snap.retrieve_hard(u, &s, 50, None).unwrap();
            }
            "soft" => {
                snap.retrieve_soft(u, &e, 50, None).unwrap();
            }
            _ => {}
        }
    }
}
