//! Driving a core's timer output: sleep until the deadline it names, or forever when it names
//! none (its `select!` branch is disabled then anyway).

/// Sleeps until `at`; never resolves for `None`.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
