//! A hostile peer or web page against a real node. Each test scripts one misbehaviour over the
//! real protocols (a peer in this process speaking libp2p to a real `fabnode` process) or with
//! a real HTTP client, and checks that the node refuses it, penalises the peer where it can,
//! and keeps serving its local jobs. docs/SECURITY.md lists the bounds these tests hold.

mod api;
#[path = "../common/mod.rs"]
mod common;
mod peers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::mesh::*;
use common::peer::*;
use common::*;
use fab_ledger::{Keypair, Signed};
use fab_mesh::bid::Offer;
use fab_mesh::net::MeshEvent;
use fab_node::sched::telemetry::TelemetryReport;
use fab_node::sched::{Telemetry, Tier};
use serde_json::{Value, json};

fn entries(n: &RunningNode) -> u64 {
    n.api().ledger_head().unwrap().entries
}
