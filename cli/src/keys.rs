use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use pyrsia_chain::Keypair;

use crate::Context;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate a new key.
    New {
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Print a key's public key.
    Show {
        #[arg(long, default_value = "default")]
        name: String,
    },
}

/// Which key signs: a name under HOME/keys, or an explicit file.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Key name under HOME/keys.
    #[arg(long, default_value = "default")]
    pub key: String,
    /// Path of a key file (overrides --key).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

pub fn key_path(home: &Path, name: &str) -> PathBuf {
    home.join("keys").join(format!("{name}.json"))
}

impl KeyArgs {
    pub fn load(&self, home: &Path) -> Result<Keypair> {
        let path = self
            .key_file
            .clone()
            .unwrap_or_else(|| key_path(home, &self.key));
        Keypair::load(&path).with_context(|| {
            format!(
                "no usable key (create one with `pyrsia keys new --name {}`)",
                self.key
            )
        })
    }
}

pub fn run(ctx: &Context, cmd: KeysCommand) -> Result<()> {
    let (name, key, created) = match cmd {
        KeysCommand::New { name } => {
            let key = Keypair::generate();
            key.save(&key_path(&ctx.home, &name))?;
            (name, key, true)
        }
        KeysCommand::Show { name } => {
            let key = Keypair::load(&key_path(&ctx.home, &name))?;
            (name, key, false)
        }
    };
    let path = key_path(&ctx.home, &name);
    ctx.print(
        &serde_json::json!({"name": name, "public_key": key.public(), "path": path}),
        || {
            if created {
                format!(
                    "created key {name}: {}\nstored in {}",
                    key.public(),
                    path.display()
                )
            } else {
                format!("{name}: {}", key.public())
            }
        },
    );
    Ok(())
}
