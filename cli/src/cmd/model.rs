//! `model add|list`: models registered by path.

use super::*;

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Register an ONNX file under a name (loads it once to check that it runs)
    Add {
        /// 1-64 letters, digits, '.', '_' or '-'
        name: String,
        /// Path to the .onnx file; the node reads it from here, so keep it in place
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List registered models
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn model(g: &Global, cmd: ModelCmd) -> Result<ExitCode> {
    let dir = data_dir(g);
    match cmd {
        ModelCmd::Add { name, file, json } => {
            let config = load_config(g, &[])?;
            let (rec, info) =
                fab_node::models::add(&dir, &name, &file, config.inference.model_bytes_max)?;
            if json {
                print_json(&json!({"name": name, "record": rec, "facts": info}));
            } else {
                println!("model {name} registered");
                println!("  file    {}", rec.path.display());
                println!("  digest  {}", rec.digest);
                for f in &info.inputs {
                    println!("  input   {f}");
                }
                for f in &info.outputs {
                    println!("  output  {f}");
                }
            }
        }
        ModelCmd::List { json } => {
            let models = fab_node::models::list(&dir)?;
            if json {
                print_json(&serde_json::to_value(&models)?);
            } else if models.is_empty() {
                println!(
                    "no models registered; add one with `fabnode model add <name> <file.onnx>`"
                );
            } else {
                for (name, rec) in models {
                    println!(
                        "{name:<20} {}  {:>10} B  {}",
                        rec.digest.short(),
                        rec.bytes,
                        rec.path.display()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
