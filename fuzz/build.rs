//! With `ROCKSDB_LIB_DIR` (scripts/fuzz-smoke.sh links the test suite's
//! RocksDB), librocksdb-sys links the static library but, unlike when it
//! compiles RocksDB itself, not the C++ standard library it needs. libFuzzer
//! happens to link it too; say so rather than rely on that.
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_some() {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }
}
