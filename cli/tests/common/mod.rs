//! Real `fabnode` processes on loopback with temporary data dirs.
#![allow(dead_code)]

pub mod mesh;
pub mod peer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fabnode")
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/digits")
        .join(name)
}

/// A data dir with a key and the digits model registered.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let t = TestDir {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = t.run(&["keys", "init"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let model = fixture("digits.onnx");
        let out = t.run(&["model", "add", "digits", model.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("FABNODE_DATA_DIR", self.path())
            .env_remove("FABNODE_API")
            .env_remove("FABNODE_CONFIG")
            // Single-node tests stay off the mesh; tests/mesh.rs turns it on.
            .env("FABNODE_MESH_ENABLED", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Starts `fabnode start` on a free loopback port and waits for it to listen.
    pub fn start(&self, envs: &[(&str, &str)]) -> Result<RunningNode, String> {
        self.start_on("127.0.0.1:0", envs)
    }

    /// Starts `fabnode start --api-listen <listen>` and waits for it to listen.
    pub fn start_on(&self, listen: &str, envs: &[(&str, &str)]) -> Result<RunningNode, String> {
        let mut cmd = self.cmd();
        cmd.args(["start", "--api-listen", listen, "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(stderr).lines();
        // The node prints its address once it listens; reading stderr blocks until then, or
        // until the process exits (a failed start).
        let mut addr = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
            if let Some(rest) = line.split(" listening on http://").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().to_owned());
                break;
            }
        }
        let log2 = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        match addr {
            Some(addr) => Ok(RunningNode {
                child,
                base: format!("http://{addr}"),
                log,
                reader: Some(reader),
            }),
            None => {
                let status = child.wait().unwrap();
                // The pipe closed with the process: the reader thread ends once it has read it all.
                let _ = reader.join();
                let text = log.lock().unwrap().clone();
                Err(format!("exit {status}: {text}"))
            }
        }
    }
}

pub struct RunningNode {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningNode {
    /// The typed API client (fab-client), for everything but HTTP-level checks.
    pub fn api(&self) -> fab_client::Client {
        fab_client::Client::new(self.base.clone(), std::time::Duration::from_secs(20))
    }

    pub fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(20)))
            .build()
            .new_agent()
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut r = self
            .agent()
            .post(format!("{}{path}", self.base))
            .send_json(body)
            .unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap())
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let mut r = self
            .agent()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap())
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let mut r = self
            .agent()
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap())
    }

    pub fn get_text(&self, path: &str) -> String {
        self.agent()
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit and for its stderr to be read to the end, so `log()`
    /// holds everything the process wrote.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// One held-out image as tensor JSON.
pub fn image_json(i: usize) -> serde_json::Value {
    let bytes = std::fs::read(fixture("test_images.npy")).unwrap();
    let t = fab_inference::Tensor::from_npy(&bytes, 1 << 20).unwrap();
    let fab_inference::TensorData::F32(px) = t.data() else {
        panic!()
    };
    let i = i % 360;
    serde_json::json!({"dtype": "f32", "shape": [1, 1, 8, 8], "data": px[i * 64..(i + 1) * 64]})
}

/// Rewrites one stored entry's bytes through redb (the file stays a valid redb file).
pub fn flip_entry_byte(data_dir: &Path, seq: u64, byte_from_end: usize) {
    use redb::ReadableTable;
    let db = redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open(data_dir.join("ledger.redb"))
        .unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(fab_ledger::store::ENTRIES).unwrap();
        let mut bytes = t.get(seq).unwrap().unwrap().value().to_vec();
        let at = bytes.len() - 1 - byte_from_end;
        bytes[at] ^= 0x01;
        t.insert(seq, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}
