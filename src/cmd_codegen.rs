//! `spoolhouse codegen`: typed clients from the registry.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use dc_config::codegen::{self, Lang};
use dc_config::registry::Registry;

/// Arguments of `spoolhouse codegen`.
#[derive(Debug, Args)]
pub struct CodegenArgs {
    /// The client's language.
    #[arg(long, value_enum)]
    lang: LangArg,
    /// The registry (events.toml).
    #[arg(long)]
    registry: PathBuf,
    /// Output folder (created; generated files in it are replaced).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LangArg {
    /// A Python 3 package (`pyproject.toml`, type hints).
    Python,
    /// A Go module (`go.mod`, package `events`).
    Go,
    /// A PHP 8 Composer package (strict types, PSR-4, `autoload.php`).
    Php,
    /// A Rust crate (`Cargo.toml`, `serde_json` its one dependency).
    Rust,
}

/// Runs `spoolhouse codegen`.
pub fn run(args: CodegenArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.registry)
        .with_context(|| format!("reading the registry {}", args.registry.display()))?;
    let registry = Registry::parse(&args.registry, &text)?;
    let lang = match args.lang {
        LangArg::Python => Lang::Python,
        LangArg::Go => Lang::Go,
        LangArg::Php => Lang::Php,
        LangArg::Rust => Lang::Rust,
    };
    let files = codegen::generate(lang, &registry, &text);
    for f in &files {
        let path = args.out.join(&f.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, &f.text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} file(s) in {} (registry {})",
        files.len(),
        args.out.display(),
        codegen::registry_version(&text)
    );
    Ok(())
}
