//! The node's long-lived subsystems, owned in one place: crash-only.
//!
//! Every subsystem (the mesh event loop, the mesh task, the servers for peers' bids and exec
//! requests, the telemetry publisher, the placer, the ledger writer thread) runs until the
//! node stops. One that ends on its own has failed, however it ended (a panic, a closed
//! channel, a bug): the node does not limp on serving 503s, it logs which subsystem stopped and
//! why and exits non-zero, so systemd or Kubernetes restarts it cleanly. At shutdown the rest
//! are aborted and awaited.

use std::future::Future;

use tokio::task::JoinSet;

/// The subsystems of a running node.
#[derive(Debug, Default)]
pub struct Subsystems {
    set: JoinSet<&'static str>,
    names: Vec<&'static str>,
}

impl Subsystems {
    /// Runs `fut` as the subsystem `name`.
    pub fn spawn(&mut self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        self.names.push(name);
        self.set.spawn(async move {
            fut.await;
            name
        });
    }

    /// Watches a subsystem that runs on its own OS thread: `ended` resolves (or is dropped)
    /// when the thread ends.
    pub fn watch_thread(&mut self, name: &'static str, ended: tokio::sync::oneshot::Receiver<()>) {
        self.spawn(name, async move {
            let _ = ended.await;
        });
    }

    /// The names of every subsystem started, in order.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Waits until a subsystem ends and says which and how; never resolves when there is none.
    pub async fn first_failure(&mut self) -> String {
        match self.set.join_next().await {
            Some(Ok(name)) => format!("{name} stopped unexpectedly"),
            Some(Err(e)) if e.is_panic() => {
                let payload = e.into_panic();
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                format!("a subsystem panicked: {why}")
            }
            Some(Err(e)) => format!("a subsystem was cancelled: {e}"),
            None => std::future::pending().await,
        }
    }

    /// Aborts every subsystem and waits until all have ended.
    pub async fn shutdown(mut self) {
        self.set.shutdown().await;
    }
}

/// Sends on drop: a thread holds one, so its watcher learns when it ends, panic included.
#[derive(Debug)]
pub struct EndSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl EndSignal {
    pub fn new() -> (EndSignal, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (EndSignal(Some(tx)), rx)
    }
}

impl Drop for EndSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_subsystem_to_end_is_named_and_the_rest_are_stopped() {
        let mut s = Subsystems::default();
        s.spawn("forever", std::future::pending());
        s.spawn("placer", async { panic!("score overflow") });
        let why = s.first_failure().await;
        assert!(
            why.contains("panicked") && why.contains("score overflow"),
            "{why}"
        );
        s.shutdown().await;

        let mut s = Subsystems::default();
        s.spawn("forever", std::future::pending());
        let (signal, ended) = EndSignal::new();
        s.watch_thread("ledger writer", ended);
        std::thread::spawn(move || {
            let _signal = signal;
            panic!("disk on fire");
        });
        assert_eq!(
            s.first_failure().await,
            "ledger writer stopped unexpectedly"
        );
        assert_eq!(s.names(), ["forever", "ledger writer"]);
        s.shutdown().await;

        // With nothing started, no failure ever comes.
        let mut none = Subsystems::default();
        let waited = tokio::time::timeout(Duration::from_millis(20), none.first_failure()).await;
        assert!(waited.is_err());
    }
}
