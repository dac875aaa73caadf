//! Embeds the path of the prebuilt DuckDB library as an rpath, so `cargo run`, `cargo test` and the
//! built binary find `libduckdb.so` without LD_LIBRARY_PATH. The container image copies the library to
//! a system path instead.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
