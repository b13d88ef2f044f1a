//! `pyrsia-normalise EPOCH IN OUT`: [`builder::normalise_command`], for a
//! [`builder::BuilderConfig::normaliser`] run inside the sandbox
//! (`pyrsia builder normalise` is the same in the `pyrsia` binary).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(builder::normalise_command(&args));
}
