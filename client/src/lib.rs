//! fab-client: the Rust SDK of a fabnode node's HTTP/JSON control API.
//!
//! - [`types`]: every request and response body, as the node writes and reads them (the node
//!   builds its answers from these types, and `docs/openapi.yaml` is checked against their
//!   schemas by this crate's tests).
//! - [`Client`] (feature `http`, on by default): a blocking client with one typed method per
//!   route, and errors that keep the API's code and message.
//! - [`verify`]: checks a job's answer without trusting the node that gave it.
//!
//! ```no_run
//! use fab_client::{Client, types::SubmitRequest};
//! use fab_inference::{Tensor, TensorData};
//!
//! let client = Client::new("http://127.0.0.1:7650", std::time::Duration::from_secs(30));
//! let input = Tensor::new(vec![1, 1, 8, 8], TensorData::F32(vec![0.0; 64])).unwrap();
//! let result = client.submit(&SubmitRequest::new("digits", input.clone())).unwrap();
//! let verified = fab_client::verify::job_result(&result, Some("input"), &input, None).unwrap();
//! println!("{} ran as entry {}", verified.job_id, verified.entry.body().seq);
//! ```

#[cfg(feature = "http")]
mod http;
pub mod types;
pub mod verify;

#[cfg(feature = "http")]
pub use http::{Client, Error};
