//! Two things the build tells the code:
//! - `BQSYNC_FEATURES`: the Cargo features this binary has, printed by `bqsync --version` (a worker
//!   image built with `--no-default-features --features gcp` says so).
//! - With the `embedded` feature, the path of the prebuilt DuckDB library as an rpath, so `cargo run`,
//!   `cargo test` and the built binary find `libduckdb.so` without LD_LIBRARY_PATH. The Dockerfile's
//!   embedded image copies the library to a system path instead.
fn main() {
    let features: Vec<&str> = [("embedded", "CARGO_FEATURE_EMBEDDED"), ("gcp", "CARGO_FEATURE_GCP")]
        .into_iter()
        .filter(|(_, variable)| std::env::var_os(variable).is_some())
        .map(|(name, _)| name)
        .collect();
    let features = if features.is_empty() { "none".to_string() } else { features.join(", ") };
    println!("cargo:rustc-env=BQSYNC_FEATURES={features}");
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_EMBEDDED").is_none() {
        return;
    }
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
