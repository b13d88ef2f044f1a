//! What to run for each recipe, which files it produces, and how to check
//! that they are the package the request named.

use std::fs;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::error::{BuildError, IoContext};
use crate::normalize;
use crate::sandbox::{sq, Toolchain};
use crate::OutputFile;

/// Recipes, in the order [`crate::supported_ecosystems`] lists them.
pub(crate) const NAMES: &[&str] = &["cargo", "maven", "npm", "python", "script"];

/// The file a `script` recipe reads from the source root.
pub(crate) const SCRIPT_FILE: &str = "pyrsia-build.toml";
const SCRIPT_FILE_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Cargo,
    Maven,
    Npm,
    Python,
    Script,
}

impl Kind {
    pub(crate) fn parse(name: &str) -> Result<Kind, BuildError> {
        match name {
            "cargo" => Ok(Kind::Cargo),
            "maven" => Ok(Kind::Maven),
            "npm" => Ok(Kind::Npm),
            "python" => Ok(Kind::Python),
            "script" => Ok(Kind::Script),
            _ => Err(BuildError::UnsupportedEcosystem {
                name: name.to_string(),
            }),
        }
    }
}

/// Where the outputs are after the build command succeeded (paths inside the
/// sandbox, relative ones to /build/src).
#[derive(Debug)]
pub(crate) enum Collect {
    /// Exactly these files; each must exist.
    Files(Vec<String>),
    /// Every regular file matching this shell glob (a constant of ours,
    /// never user input); at least one must exist.
    Glob(&'static str),
}

/// A version probe run on the host with the sandbox's PATH, for `build_env`.
#[derive(Debug)]
pub(crate) struct Probe {
    pub label: &'static str,
    pub argv: &'static [&'static str],
}

#[derive(Debug)]
pub(crate) struct Recipe {
    pub command: Vec<String>,
    pub collect: Collect,
    /// Added to the sandbox's base environment.
    pub env: Vec<(String, String)>,
    pub probes: &'static [Probe],
    /// What of the host's toolchains the sandbox sees.
    pub toolchains: Vec<Toolchain>,
    /// The dependency step, if the recipe has one for this source.
    pub fetch: Option<Fetch>,
}

/// A recipe's dependency step: a command run with the recording proxy as
/// its only network, before the offline build.
#[derive(Debug)]
pub(crate) struct Fetch {
    /// Shell command, run in /build/src.
    pub command: &'static str,
    /// The upstreams it needs; without them the build runs offline.
    pub needs: &'static [&'static str],
    /// Whether the recipe cannot build at all without the step (Maven
    /// resolves its plugins while it builds): then a build whose upstreams
    /// are not configured fails at once instead of running offline.
    pub required: bool,
    /// Paths under /build that the build gets besides `home`.
    pub carry: &'static [&'static str],
    /// Environment of the step, besides the base one.
    pub env: &'static [(&'static str, &'static str)],
    /// (variable, upstream, suffix): the variable holds the upstream's URL
    /// through the proxy, then the suffix.
    pub proxied: &'static [(&'static str, &'static str, &'static str)],
    /// The build command once the step has run.
    pub build: &'static str,
}

impl Fetch {
    pub(crate) fn available(&self, upstreams: &[crate::Upstream]) -> bool {
        self.needs
            .iter()
            .all(|n| upstreams.iter().any(|u| u.name == *n))
    }

    /// The upstreams in `needs` that `upstreams` lacks.
    pub(crate) fn missing(&self, upstreams: &[crate::Upstream]) -> Vec<&'static str> {
        self.needs
            .iter()
            .copied()
            .filter(|n| !upstreams.iter().any(|u| u.name == *n))
            .collect()
    }

    pub(crate) fn env(&self, proxy_url: &dyn Fn(&str) -> String) -> Vec<(String, String)> {
        let fixed = self.env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let proxied = self.proxied.iter().map(|(var, upstream, suffix)| {
            (var.to_string(), format!("{}{suffix}", proxy_url(upstream)))
        });
        fixed.chain(proxied).collect()
    }
}

/// The lines of a failed dependency step's log in which a client says a
/// file does not match the digest its lockfile pins.
pub(crate) fn integrity_failure(log: &str) -> Option<String> {
    const MARKERS: &[&str] = &[
        "EINTEGRITY",
        "integrity checksum failed",
        "failed to verify the checksum",
        "checksum for `",
        "DO NOT MATCH THE HASHES",
    ];
    let lines: Vec<String> = log
        .lines()
        .filter(|l| MARKERS.iter().any(|m| l.contains(m)))
        .take(3)
        .map(|l| l.trim().chars().take(300).collect())
        .collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

/// npm installs exactly what the lockfile pins, checking each tarball's
/// `integrity`; no package script runs in this step. The build gets the
/// installed tree and runs the install scripts offline.
const NPM_FETCH: Fetch = Fetch {
    command: "npm ci --ignore-scripts",
    needs: &["npm"],
    required: false,
    carry: &["src/node_modules"],
    env: &[
        ("npm_config_cache", "/build/home/.npm"),
        ("npm_config_userconfig", "/build/home/.npmrc"),
        ("npm_config_update_notifier", "false"),
        ("npm_config_fund", "false"),
        ("npm_config_audit", "false"),
        ("npm_config_replace_registry_host", "always"),
    ],
    proxied: &[("npm_config_registry", "npm", "")],
    build: "npm rebuild --offline && npm pack --pack-destination /build/pack",
};

/// A library that ships no Cargo.lock gets one here, once, recorded; then
/// cargo fetches what it pins, checking each crate's checksum.
const CARGO_FETCH: Fetch = Fetch {
    command: concat!(
        r#"mkdir -p "$CARGO_HOME" && printf '[source.crates-io]
replace-with = "pyrsia"
[source.pyrsia]
registry = "sparse+%s"
' "$PYRSIA_CRATES_INDEX" > "$CARGO_HOME/config.toml""#,
        " && { [ -f Cargo.lock ] || cargo generate-lockfile; } && cargo fetch --locked"
    ),
    needs: &["crates"],
    required: false,
    carry: &["src/Cargo.lock"],
    env: &[
        ("CARGO_HOME", "/build/home/.cargo"),
        ("CARGO_TERM_COLOR", "never"),
    ],
    proxied: &[("PYRSIA_CRATES_INDEX", "crates", "")],
    build: "cargo package --offline --no-verify --allow-dirty --locked",
};

/// PEP 517 build requirements, as wheels only (no sdist's code runs here),
/// for an isolated build that installs them from that directory.
const PYTHON_FETCH: Fetch = Fetch {
    command: concat!(
        "python3 -c \"import os, tomllib; d = tomllib.load(open('pyproject.toml', 'rb')) if os.path.exists('pyproject.toml') else {}; ",
        "print('\\n'.join(d.get('build-system', {}).get('requires', ['setuptools>=40.8.0'])))\" > /build/tmp/requires.txt",
        " && python3 -m pip download --only-binary=:all: --dest /build/home/wheels --index-url \"$PYRSIA_PYPI_SIMPLE\" -r /build/tmp/requires.txt"
    ),
    needs: &["pypi"],
    required: false,
    carry: &[],
    env: &[
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        ("PIP_NO_CACHE_DIR", "1"),
    ],
    proxied: &[("PYRSIA_PYPI_SIMPLE", "pypi", "simple/")],
    build: "python3 -m build --sdist --wheel --outdir /build/dist .",
};

/// What both Maven runs share: the settings, the local repository in the
/// carried home, no tests, and archive timestamps from the commit.
macro_rules! maven_args {
    () => {
        "-s /build/home/.m2/settings.xml -gs /build/home/.m2/settings.xml -Dmaven.repo.local=/build/home/.m2/repository -DskipTests -Dproject.build.outputTimestamp=$SOURCE_DATE_EPOCH"
    };
}

/// Maven resolves while it builds, so the step is a full build through the
/// proxy; the offline build after it uses exactly what that one fetched.
/// Its settings (the proxy as the mirror of every repository) are both the
/// user and the global ones: the host's `/etc/maven/settings.xml` (mirrors,
/// proxies, offline) is not consulted.
const MAVEN_FETCH: Fetch = Fetch {
    command: concat!(
        r#"mkdir -p /build/home/.m2 && printf '<settings><mirrors><mirror><id>pyrsia</id><mirrorOf>*</mirrorOf><url>%s</url></mirror></mirrors></settings>
' "$PYRSIA_MAVEN" > /build/home/.m2/settings.xml"#,
        " && mvn -B -ntp ",
        maven_args!(),
        " package"
    ),
    needs: &["maven"],
    required: true,
    carry: &[],
    env: &[],
    proxied: &[("PYRSIA_MAVEN", "maven", "")],
    build: concat!(
        "mvn -o -B -ntp ",
        maven_args!(),
        " package",
        r#" && a="${PYRSIA_PACKAGE_NAME#*:}" && mkdir -p /build/pack && cp "target/$a-$PYRSIA_PACKAGE_VERSION.jar" pom.xml /build/pack/ && mv /build/pack/pom.xml "/build/pack/$a-$PYRSIA_PACKAGE_VERSION.pom""#
    ),
};

/// The fetch step's sandbox script: the source copy, the command, then
/// the carried paths as tar on fd 3.
pub(crate) fn fetch_script(fetch: &Fetch) -> String {
    let carry: Vec<String> = fetch.carry.iter().map(|p| sq(p)).collect();
    format!(
        "mkdir -p /build/src /build/home /build/tmp || exit 120\n\
cp -a /pyrsia/source/. /build/src/ || {{ echo 'pyrsia: copying the source into the sandbox failed'; exit 121; }}\n\
cd /build/src || exit 120\n\
sh -c {} 3>&-\n\
status=$?\n\
if [ \"$status\" -ne 0 ]; then echo \"pyrsia: dependency step exited with status $status\"; exit \"$status\"; fi\n\
cd /build || exit 120\n\
set -- home; for p in {}; do [ -e \"$p\" ] && set -- \"$@\" \"$p\"; done\n\
exec tar -cf - \"$@\" >&3\n",
        sq(fetch.command),
        carry.join(" ")
    )
}

/// Where the checkout is copied inside the sandbox and the build runs.
const SRC_DIR: &str = "/build/src";
/// Where a [`crate::BuilderConfig::normaliser`] is bound in the sandbox.
pub(crate) const NORMALISER: &str = "/pyrsia/normalise";

/// The build sandbox's script: copy the source to the fixed path, run the
/// recipe, then stream the collected outputs as tar on fd 3.
pub(crate) fn build_script(
    recipe: &Recipe,
    with_deps: bool,
    normaliser_args: Option<&[String]>,
) -> String {
    let command: Vec<String> = match (&recipe.fetch, with_deps) {
        (Some(fetch), true) => vec!["sh".into(), "-c".into(), sq(fetch.build)],
        _ => recipe.command.iter().map(|a| sq(a)).collect(),
    };
    let mut s = String::new();
    s.push_str(
        "mkdir -p /build/src /build/home /build/tmp /build/pack /build/dist /build/target /build/.pyrsia-out || exit 120\n",
    );
    s.push_str("cp -a /pyrsia/source/. /build/src/ || { echo 'pyrsia: copying the source into the sandbox failed'; exit 121; }\n");
    if with_deps {
        s.push_str("tar -xf /pyrsia/deps.tar -C /build || { echo 'pyrsia: unpacking the dependencies failed'; exit 123; }\n");
    }
    s.push_str(&format!("cd {SRC_DIR} || exit 120\n"));
    s.push_str(&format!(
        "echo {}\n",
        sq(&format!("pyrsia: running {}", command.join(" ")))
    ));
    s.push_str(&format!("{} 3>&-\n", command.join(" ")));
    s.push_str("status=$?\n");
    s.push_str("if [ \"$status\" -ne 0 ]; then echo \"pyrsia: build command exited with status $status\"; exit \"$status\"; fi\n");
    match &recipe.collect {
        Collect::Files(files) => {
            for f in files {
                let q = sq(f);
                s.push_str(&format!(
                    "if [ -f {q} ] && [ ! -L {q} ]; then cp -- {q} /build/.pyrsia-out/ || exit 122; else echo {}; fi\n",
                    sq(&format!("pyrsia: declared output {f} is missing or not a regular file"))
                ));
            }
        }
        Collect::Glob(pattern) => {
            s.push_str(&format!(
                "for f in {pattern}; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then cp -- \"$f\" /build/.pyrsia-out/ || exit 122; fi; done\n"
            ));
        }
    }
    let collected = match normaliser_args {
        Some(args) => {
            let args: Vec<String> = args.iter().map(|a| sq(a)).collect();
            s.push_str(&format!(
                "{NORMALISER} {} \"$SOURCE_DATE_EPOCH\" /build/.pyrsia-out /build/.pyrsia-norm || exit {}\n",
                args.join(" "),
                crate::NORMALISE_FAILED
            ));
            "/build/.pyrsia-norm"
        }
        None => "/build/.pyrsia-out",
    };
    s.push_str(&format!("cd {collected} && exec tar -cf - . >&3\n"));
    s
}

const PY_MODULES_PROBE: &str = "import importlib.metadata as m\n\
for p in ('build', 'setuptools', 'wheel'):\n\
    try: v = m.version(p)\n\
    except Exception: v = 'none'\n\
    print(p + '=' + v, end=' ')";

/// The recipe for `kind`; a `script` recipe reads `pyrsia-build.toml` from
/// the checkout in `src`.
pub(crate) fn resolve(kind: Kind, src: &Path) -> Result<Recipe, BuildError> {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(match kind {
        Kind::Script => {
            let file = read_script_file(src)?;
            let toolchains = file
                .toolchains
                .iter()
                .map(|t| {
                    Toolchain::parse(t).ok_or_else(|| BuildError::BadRecipe {
                        reason: format!(
                            "unknown toolchain {t:?} (known: rust, python, node, java)"
                        ),
                    })
                })
                .collect::<Result<_, _>>()?;
            Recipe {
                command: file.command,
                collect: Collect::Files(file.outputs),
                env: Vec::new(),
                probes: &[],
                toolchains,
                fetch: None,
            }
        }
        Kind::Npm => Recipe {
            command: argv(&["npm", "pack", "--pack-destination", "/build/pack"]),
            collect: Collect::Glob("/build/pack/*.tgz"),
            env: env(&[
                ("npm_config_cache", "/build/home/.npm"),
                ("npm_config_userconfig", "/build/home/.npmrc"),
                ("npm_config_offline", "true"),
                ("npm_config_update_notifier", "false"),
                ("npm_config_fund", "false"),
                ("npm_config_audit", "false"),
                ("npm_config_loglevel", "notice"),
            ]),
            probes: &[
                Probe {
                    label: "node",
                    argv: &["node", "--version"],
                },
                Probe {
                    label: "npm",
                    argv: &["npm", "--version"],
                },
            ],
            toolchains: vec![Toolchain::Node],
            fetch: ["package-lock.json", "npm-shrinkwrap.json"]
                .iter()
                .any(|f| src.join(f).is_file())
                .then_some(NPM_FETCH),
        },
        Kind::Cargo => Recipe {
            command: argv(&[
                "cargo",
                "package",
                "--offline",
                "--no-verify",
                "--allow-dirty",
            ]),
            collect: Collect::Glob("/build/target/package/*.crate"),
            env: env(&[
                ("CARGO_HOME", "/build/home/.cargo"),
                ("CARGO_TARGET_DIR", "/build/target"),
                ("CARGO_NET_OFFLINE", "true"),
                ("CARGO_TERM_COLOR", "never"),
            ]),
            probes: &[
                Probe {
                    label: "cargo",
                    argv: &["cargo", "--version"],
                },
                Probe {
                    label: "rustc",
                    argv: &["rustc", "--version"],
                },
            ],
            toolchains: vec![Toolchain::Rust],
            fetch: Some(CARGO_FETCH),
        },
        Kind::Python => Recipe {
            command: argv(&[
                "python3",
                "-m",
                "build",
                "--no-isolation",
                "--sdist",
                "--wheel",
                "--outdir",
                "/build/dist",
                ".",
            ]),
            collect: Collect::Glob("/build/dist/*"),
            env: env(&[
                ("PYTHONDONTWRITEBYTECODE", "1"),
                ("PYTHONHASHSEED", "0"),
                ("PIP_NO_INDEX", "1"),
                ("PIP_FIND_LINKS", "/build/home/wheels"),
                ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
            ]),
            probes: &[
                Probe {
                    label: "python",
                    argv: &["python3", "--version"],
                },
                Probe {
                    label: "",
                    argv: &["python3", "-c", PY_MODULES_PROBE],
                },
            ],
            toolchains: vec![Toolchain::Python],
            fetch: Some(PYTHON_FETCH),
        },
        Kind::Maven => Recipe {
            command: argv(&["sh", "-c", MAVEN_FETCH.build]),
            collect: Collect::Glob("/build/pack/*"),
            env: Vec::new(),
            probes: &[
                Probe {
                    // `java -version` writes to stderr; the runtime's
                    // build, e.g. 17.0.15+6-Debian-1deb12u1.
                    label: "java",
                    argv: &[
                        "sh",
                        "-c",
                        r"java --version | sed -n 's/.*(build \([^)]*\)).*/\1/p' | head -n 1",
                    ],
                },
                Probe {
                    // `mvn -v` wraps its first line in colour codes even
                    // in batch mode.
                    label: "maven",
                    argv: &[
                        "sh",
                        "-c",
                        "mvn -B -v | grep -o 'Maven [0-9][^ ]*' | head -n 1",
                    ],
                },
            ],
            toolchains: vec![Toolchain::Java],
            fetch: Some(MAVEN_FETCH),
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    command: Vec<String>,
    outputs: Vec<String>,
    /// Host toolchains the command needs beyond the base system: any of
    /// `rust`, `python`, `node`, `java`.
    #[serde(default)]
    toolchains: Vec<String>,
}

fn read_script_file(src: &Path) -> Result<ScriptFile, BuildError> {
    let bad = |reason: String| BuildError::BadRecipe { reason };
    let path = src.join(SCRIPT_FILE);
    // symlink_metadata: a symlink could point at a file of the builder host.
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("missing from the source root".to_string()))
        }
        Err(e) => return Err(e).context(|| format!("stat {}", path.display())),
    };
    if !meta.is_file() {
        return Err(bad("is not a regular file".to_string()));
    }
    if meta.len() > SCRIPT_FILE_MAX {
        return Err(bad(format!("larger than {SCRIPT_FILE_MAX} bytes")));
    }
    let text = fs::read_to_string(&path).map_err(|e| bad(format!("unreadable: {e}")))?;
    let file: ScriptFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;

    if file.command.is_empty() || file.command[0].is_empty() {
        return Err(bad("`command` must be a non-empty argv list".to_string()));
    }
    if file.command.iter().any(|a| a.contains('\0')) {
        return Err(bad("`command` contains a NUL byte".to_string()));
    }
    if file.outputs.is_empty() {
        return Err(bad("`outputs` must list at least one file".to_string()));
    }
    let mut names = Vec::new();
    for out in &file.outputs {
        let name = output_file_name(out).ok_or_else(|| {
            bad(format!(
                "output {out:?} must be a relative path to a file without `..`"
            ))
        })?;
        if names.contains(&name) {
            return Err(bad(format!("two outputs are named {name:?}")));
        }
        names.push(name);
    }
    Ok(file)
}

/// The published name of a declared output: its last component. None unless
/// the path is relative, made of plain components, and free of NUL.
pub(crate) fn output_file_name(path: &str) -> Option<String> {
    if path.is_empty() || path.contains('\0') {
        return None;
    }
    let p = Path::new(path);
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    p.file_name()?.to_str().map(str::to_string)
}

/// Checks, where the format makes it cheap, that the outputs are the package
/// and version the request named. Returns (output name, reason) on mismatch.
pub(crate) fn check_outputs(
    kind: Kind,
    name: &str,
    version: &str,
    outputs: &[OutputFile],
) -> Result<(), (String, String)> {
    match kind {
        Kind::Script => Ok(()),
        Kind::Maven => {
            let artifact = name.rsplit_once(':').map_or(name, |(_, a)| a);
            let mut expected = vec![
                format!("{artifact}-{version}.jar"),
                format!("{artifact}-{version}.pom"),
            ];
            expected.sort();
            let mut found: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
            found.sort();
            if found == expected {
                Ok(())
            } else {
                Err((expected.join(", "), format!("maven produced {found:?}")))
            }
        }
        Kind::Npm => {
            for out in outputs {
                let (n, v) = normalize::npm_name_version(&out.path)
                    .map_err(|e| (out.name.clone(), format!("unreadable package.json: {e}")))?;
                if n != name || v != version {
                    return Err((
                        out.name.clone(),
                        format!("package.json says {n}@{v}, the request {name}@{version}"),
                    ));
                }
            }
            Ok(())
        }
        Kind::Cargo => {
            let expected = format!("{name}-{version}.crate");
            if outputs.iter().any(|o| o.name == expected) {
                Ok(())
            } else {
                let found: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                Err((expected, format!("cargo produced {found:?} instead")))
            }
        }
        Kind::Python => {
            for out in outputs {
                let (n, v) = python_name_version(&out.name).ok_or_else(|| {
                    (
                        out.name.clone(),
                        "neither a wheel nor a .tar.gz sdist".to_string(),
                    )
                })?;
                if normalise_python_name(&n) != normalise_python_name(name) || v != version {
                    return Err((
                        out.name.clone(),
                        format!("file is {n} {v}, the request {name} {version}"),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Name and version from `name-version.tar.gz` or
/// `name-version(-build)?-py-abi-platform.whl`.
fn python_name_version(file: &str) -> Option<(String, String)> {
    if let Some(stem) = file.strip_suffix(".whl") {
        let mut parts = stem.split('-');
        let n = parts.next()?;
        let v = parts.next()?;
        return Some((n.to_string(), v.to_string()));
    }
    let stem = file.strip_suffix(".tar.gz")?;
    let (n, v) = stem.rsplit_once('-')?;
    Some((n.to_string(), v.to_string()))
}

/// PEP 503 name normalisation: case-insensitive, runs of `-_.` equal.
fn normalise_python_name(name: &str) -> String {
    let mut out = String::new();
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
            }
            in_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_sep = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn output_paths_must_stay_inside_the_source() {
        assert_eq!(output_file_name("out/a.tar").as_deref(), Some("a.tar"));
        assert_eq!(output_file_name("a.tar").as_deref(), Some("a.tar"));
        for bad in ["", "/etc/passwd", "../x", "out/../../x", "./x", "out/.."] {
            assert_eq!(output_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn python_file_names() {
        assert_eq!(
            python_name_version("my_pkg-1.0.0-py3-none-any.whl"),
            Some(("my_pkg".into(), "1.0.0".into()))
        );
        assert_eq!(
            python_name_version("my-pkg-1.0.0.tar.gz"),
            Some(("my-pkg".into(), "1.0.0".into()))
        );
        assert_eq!(
            normalise_python_name("My_Pkg.x"),
            normalise_python_name("my-pkg-x")
        );
    }
}
