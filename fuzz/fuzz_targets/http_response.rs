//! The HTTP source's reading of an API's answers: the body of a page, a `Retry-After` header, and
//! the order of cursor values. Properties:
//! - nothing panics, whatever the API sends;
//! - a page read has a non-empty next-page token or none;
//! - cursor order is antisymmetric (a cursor never moves back and forth between two values).

#![no_main]

use bqsync::sources::http::{compare_cursors, parse_page, parse_retry_after};
use libfuzzer_sys::fuzz_target;

#[path = "shared.rs"]
#[allow(dead_code)] // each target uses part of it
mod shared;

const PATHS: [Option<&str>; 5] = [None, Some("data"), Some("data.items"), Some("items"), Some("next")];

fuzz_target!(|input: &[u8]| {
    let Some((&choice, body)) = input.split_first() else { return };
    let (records_path, next_page_path) = (PATHS[choice as usize % 5], PATHS[(choice as usize / 5) % 5]);
    if let Ok(page) = parse_page(body, records_path, next_page_path) {
        assert!(page.next_page.as_deref() != Some(""), "an empty token is the last page");
    }
    let (a, b) = shared::split(body);
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let _ = parse_retry_after(&a);
    assert_eq!(compare_cursors(&a, &b), compare_cursors(&b, &a).reverse(), "{a:?} vs {b:?}");
});
