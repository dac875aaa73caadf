//! What the targets share: the repository's table catalog, loaded once.

use std::sync::OnceLock;

use bqsync::schema::Catalog;

pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");
        Catalog::load_dir(std::path::Path::new(dir)).expect("the repository's schemas load")
    })
}

/// Splits `data` at the first `0xFF` byte (which valid UTF-8 never holds): the part before and after.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
