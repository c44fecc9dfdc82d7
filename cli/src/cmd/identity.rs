//! `keys`, `api-token` and `config`: the node's identity, its API token, its configuration.

use super::*;

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create the node key (ed25519, mode 0600) if there is none
    Init {
        #[arg(long)]
        json: bool,
    },
    /// Show the node's PeerId and key file
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// The control API's bearer token, `<data dir>/api.token` (mode 0600). While it exists, every
/// API request must carry `Authorization: Bearer <token>`; the CLI sends it by itself (from
/// the data dir, or FABNODE_API_TOKEN when the node runs elsewhere). A node listens beyond
/// loopback (api.listen) only with a token.
#[derive(Debug, Subcommand)]
pub enum ApiTokenCmd {
    /// Create the token if there is none (restart the node to use it)
    Init {
        /// Replace an existing token (clients holding the old one are refused)
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the token, for clients on other machines (FABNODE_API_TOKEN)
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration (file, then FABNODE_* environment, then defaults)
    Show {
        #[arg(long)]
        json: bool,
    },
}

pub fn keys(g: &Global, cmd: KeysCmd) -> Result<ExitCode> {
    let dir = data_dir(g);
    let path = datadir::key_path(&dir);
    let (key, created, json) = match cmd {
        KeysCmd::Init { json } => {
            if path.exists() {
                (Keypair::load(&path)?, false, json)
            } else {
                datadir::create(&dir)
                    .with_context(|| format!("creating data dir {}", dir.display()))?;
                let key = Keypair::generate();
                key.save_new(&path)?;
                (key, true, json)
            }
        }
        KeysCmd::Show { json } => (Keypair::load(&path)?, false, json),
    };
    let peer_id = key.public().peer_id();
    if json {
        print_json(
            &json!({"peer_id": peer_id, "public_key": hex::encode(key.public().to_bytes()), "key_file": path, "created": created}),
        );
    } else {
        if created {
            println!("created a new node key");
        }
        println!("peer id   {peer_id}");
        println!("key file  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn api_token(g: &Global, cmd: ApiTokenCmd) -> Result<ExitCode> {
    use fab_node::api::token::{ApiToken, TokenError};
    let dir = data_dir(g);
    let path = datadir::api_token_path(&dir);
    let (token, created, json) = match cmd {
        ApiTokenCmd::Init { force, json } => match ApiToken::create(&dir, force) {
            Ok(t) => (t, true, json),
            Err(TokenError::Exists { .. }) => (
                ApiToken::load(&dir)?.context("the API token vanished while it was read")?,
                false,
                json,
            ),
            Err(e) => return Err(e.into()),
        },
        ApiTokenCmd::Show { json } => (
            ApiToken::load(&dir)?.with_context(|| {
                format!(
                    "no API token at {}; create one with `fabnode api-token init`",
                    path.display()
                )
            })?,
            false,
            json,
        ),
    };
    if json {
        print_json(&json!({"token": token.as_str(), "token_file": path, "created": created}));
    } else {
        if created {
            eprintln!(
                "created an API token; every API request now needs it (restart a running node)"
            );
        }
        println!("{}", token.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn config(g: &Global, cmd: ConfigCmd) -> Result<ExitCode> {
    let ConfigCmd::Show { json } = cmd;
    let c = load_config(g, &[])?;
    if json {
        print_json(&serde_json::to_value(&c)?);
    } else {
        print!("{}", c.to_toml());
    }
    Ok(ExitCode::SUCCESS)
}
