//! `/fabnode/bid/1`: a call for bids and a signed answer (libp2p request-response, one CBOR
//! value per stream direction).
//!
//! | message | CBOR |
//! |---|---|
//! | call | `[1, job id, requester key, model digest, input_bytes, reference_latency_us, deadline_us, max_cost \| null, [tier], [region], [label], replicas]` |
//! | answer | a signed [`BidBody`] (kind `bid`) |
//!
//! [`BidBody`] is `[1, job id, bidder key, [0, queue_us, compute_us, transfer_us, cost_micros,
//! energy_uj, cached (0/1)] | [1, reason]]`. The bidder signs its answer, so a requester can
//! show who offered what (`--explain`) and a bid cannot be attributed to another node.

use ciborium::Value;
use fab_ledger::cbor::{self, Cbor, DecodeError, Fields};
use fab_ledger::{PublicKey, Signed, SignedBody};

/// The protocol id.
pub const BID_PROTOCOL: &str = "/fabnode/bid/1";
/// Largest call for bids.
pub const BID_REQUEST_BYTES_MAX: usize = 4096;
/// Largest signed answer.
pub const BID_RESPONSE_BYTES_MAX: usize = 2048;
/// Most tiers, regions or labels in a call.
pub const NAMES_MAX: usize = 32;
/// Longest name or decline reason.
pub const TEXT_BYTES_MAX: usize = 512;
/// Longest time an offer or a call may name (queue, compute, transfer, deadline, reference
/// latency): one day. Anything longer is not an estimate but an attempt to break the
/// requester's arithmetic.
pub const TIME_US_MAX: u64 = 86_400_000_000;
/// Largest cost an offer may name, in micro-units (a billion units).
pub const COST_MICROS_MAX: u64 = 1_000_000_000_000_000;
/// Largest energy an offer may name: 10^15 µJ, about 278 kWh.
pub const ENERGY_UJ_MAX: u64 = 1_000_000_000_000_000;
/// Largest input a call may describe (1 GiB); the exec protocol's own limit is far lower.
pub const INPUT_BYTES_MAX: u64 = 1 << 30;
/// Most replicas a call may ask for.
pub const REPLICAS_MAX: u64 = 16;

const WHAT: &str = "bid message";

/// A requester's call for bids: the job's shape and its SLA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BidRequest {
    pub job: [u8; 32],
    pub requester: [u8; 32],
    pub model_digest: [u8; 32],
    pub input_bytes: u64,
    pub reference_latency_us: u64,
    pub deadline_us: u64,
    pub max_cost_micros: Option<u64>,
    /// Tier codes: 0 device, 1 edge, 2 cloud.
    pub tiers: Vec<u64>,
    pub regions: Vec<String>,
    pub labels: Vec<String>,
    pub replicas: u64,
}

/// A bidder's estimate. A decoded offer is plausible ([`Offer::check`]): every time in
/// `..=TIME_US_MAX` (compute at least 1 µs), cost and energy under their maxima.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    pub queue_us: u64,
    pub compute_us: u64,
    pub transfer_us: u64,
    pub cost_micros: u64,
    pub energy_uj: u64,
    pub cached: bool,
}

/// A bidder's signed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BidBody {
    pub job: [u8; 32],
    pub bidder: PublicKey,
    pub answer: Result<Offer, String>,
}

pub type SignedBid = Signed<BidBody>;

/// A (signature-checked) answer counts only when the peer asked signed it: a node cannot hand
/// over another node's bid as its own.
pub fn check_bidder(bid: &SignedBid, asked_peer_id: &str) -> Result<(), String> {
    if bid.body().bidder.peer_id() == asked_peer_id {
        Ok(())
    } else {
        Err("bid signed by another node".into())
    }
}

/// `value` if it lies in `range`, else a decode error naming the field.
fn within(
    what: &'static str,
    field: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, DecodeError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(DecodeError::invalid(
            what,
            format!(
                "{field} = {value} is outside {}..={}",
                range.start(),
                range.end()
            ),
        ))
    }
}

impl Offer {
    /// Refuses an implausible offer: a zero or day-long compute time, a cost or energy that
    /// would dominate any score. Bidders check their own offers with it before signing (and
    /// decline instead), requesters when they decode one.
    pub fn check(&self) -> Result<(), DecodeError> {
        const W: &str = "bid";
        within(W, "queue_us", self.queue_us, 0..=TIME_US_MAX)?;
        within(W, "compute_us", self.compute_us, 1..=TIME_US_MAX)?;
        within(W, "transfer_us", self.transfer_us, 0..=TIME_US_MAX)?;
        within(W, "cost_micros", self.cost_micros, 0..=COST_MICROS_MAX)?;
        within(W, "energy_uj", self.energy_uj, 0..=ENERGY_UJ_MAX)?;
        Ok(())
    }
}

fn names(v: Value, field: &str) -> Result<Vec<String>, DecodeError> {
    match v {
        Value::Array(a) if a.len() <= NAMES_MAX => a
            .into_iter()
            .map(|x| match x {
                Value::Text(t) if t.len() <= TEXT_BYTES_MAX => Ok(t),
                _ => Err(DecodeError::invalid(WHAT, format!("{field}: short texts"))),
            })
            .collect(),
        _ => Err(DecodeError::invalid(
            WHAT,
            format!("{field}: a list of at most {NAMES_MAX}"),
        )),
    }
}

impl BidRequest {
    pub fn encode(&self) -> Vec<u8> {
        cbor::encode_value(&Value::Array(vec![
            cbor::uint(1),
            cbor::bytes(&self.job),
            cbor::bytes(&self.requester),
            cbor::bytes(&self.model_digest),
            cbor::uint(self.input_bytes),
            cbor::uint(self.reference_latency_us),
            cbor::uint(self.deadline_us),
            self.max_cost_micros.map_or(Value::Null, cbor::uint),
            Value::Array(self.tiers.iter().map(|t| cbor::uint(*t)).collect()),
            Value::Array(self.regions.iter().map(|r| cbor::text(r)).collect()),
            Value::Array(self.labels.iter().map(|l| cbor::text(l)).collect()),
            cbor::uint(self.replicas),
        ]))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value = cbor::decode_value(bytes, WHAT, BID_REQUEST_BYTES_MAX)?;
        let mut f = Fields::new(value, WHAT, 12)?;
        if f.u64("version")? != 1 {
            return Err(DecodeError::invalid(WHAT, "unsupported version"));
        }
        let job = f.array("job")?;
        let requester = f.array("requester")?;
        let model_digest = f.array("model_digest")?;
        let input_bytes = within(
            WHAT,
            "input_bytes",
            f.u64("input_bytes")?,
            0..=INPUT_BYTES_MAX,
        )?;
        let reference_latency_us = within(
            WHAT,
            "reference_latency_us",
            f.u64("reference_latency_us")?,
            1..=TIME_US_MAX,
        )?;
        let deadline_us = within(WHAT, "deadline_us", f.u64("deadline_us")?, 1..=TIME_US_MAX)?;
        let max_cost_micros = match f.value("max_cost")? {
            Value::Null => None,
            Value::Integer(i) => Some(within(
                WHAT,
                "max_cost",
                u64::try_from(i128::from(i))
                    .map_err(|_| DecodeError::invalid(WHAT, "max_cost out of range"))?,
                0..=COST_MICROS_MAX,
            )?),
            _ => return Err(DecodeError::invalid(WHAT, "max_cost: null or integer")),
        };
        let tiers = match f.value("tiers")? {
            Value::Array(a) if a.len() <= 3 => a
                .into_iter()
                .map(|t| match t {
                    Value::Integer(i) if (0..=2).contains(&i128::from(i)) => {
                        Ok(i128::from(i) as u64)
                    }
                    _ => Err(DecodeError::invalid(WHAT, "tiers: 0, 1 or 2")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(DecodeError::invalid(WHAT, "tiers: a list of at most 3")),
        };
        Ok(BidRequest {
            job,
            requester,
            model_digest,
            input_bytes,
            reference_latency_us,
            deadline_us,
            max_cost_micros,
            tiers,
            regions: names(f.value("regions")?, "regions")?,
            labels: names(f.value("labels")?, "labels")?,
            replicas: within(WHAT, "replicas", f.u64("replicas")?, 1..=REPLICAS_MAX)?,
        })
    }
}

impl Cbor for BidBody {
    const WHAT: &'static str = "bid";
    const BYTES_MAX: usize = 1024;

    fn to_value(&self) -> Value {
        let answer = match &self.answer {
            Ok(o) => Value::Array(vec![
                cbor::uint(0),
                cbor::uint(o.queue_us),
                cbor::uint(o.compute_us),
                cbor::uint(o.transfer_us),
                cbor::uint(o.cost_micros),
                cbor::uint(o.energy_uj),
                cbor::uint(u64::from(o.cached)),
            ]),
            Err(reason) => Value::Array(vec![cbor::uint(1), cbor::text(reason)]),
        };
        Value::Array(vec![
            cbor::uint(1),
            cbor::bytes(&self.job),
            cbor::bytes(&self.bidder.to_bytes()),
            answer,
        ])
    }

    fn from_value(value: Value) -> Result<Self, DecodeError> {
        let mut f = Fields::new(value, "bid", 4)?;
        if f.u64("version")? != 1 {
            return Err(DecodeError::invalid("bid", "unsupported version"));
        }
        let job = f.array("job")?;
        let bidder = PublicKey::from_bytes(&f.array("bidder")?)
            .ok_or_else(|| DecodeError::invalid("bid", "bidder is not a valid key"))?;
        let answer = f.value("answer")?;
        let len = match &answer {
            Value::Array(a) => a.len(),
            _ => 0,
        };
        let mut a = Fields::new(answer, "bid", len)?;
        let answer = match (a.u64("kind")?, len) {
            (0, 7) => Ok(Offer {
                queue_us: a.u64("queue_us")?,
                compute_us: a.u64("compute_us")?,
                transfer_us: a.u64("transfer_us")?,
                cost_micros: a.u64("cost_micros")?,
                energy_uj: a.u64("energy_uj")?,
                cached: match a.u64("cached")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::invalid("bid", "cached: 0 or 1")),
                },
            }),
            (1, 2) => Err(a.text("reason", TEXT_BYTES_MAX)?),
            _ => return Err(DecodeError::invalid("bid", "unknown answer")),
        };
        if let Ok(offer) = &answer {
            offer.check()?;
        }
        Ok(BidBody {
            job,
            bidder,
            answer,
        })
    }
}

impl SignedBody for BidBody {
    const KIND: &'static str = "bid";
    fn signer(&self) -> Result<PublicKey, DecodeError> {
        Ok(self.bidder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fab_ledger::Keypair;

    fn call() -> BidRequest {
        BidRequest {
            job: [1; 32],
            requester: [2; 32],
            model_digest: [3; 32],
            input_bytes: 256,
            reference_latency_us: 1_000,
            deadline_us: 30_000_000,
            max_cost_micros: Some(5),
            tiers: vec![1, 2],
            regions: vec!["eu".into()],
            labels: vec!["gpu".into()],
            replicas: 1,
        }
    }

    #[test]
    fn calls_and_signed_answers_round_trip_and_forgeries_fail() {
        assert_eq!(BidRequest::decode(&call().encode()).unwrap(), call());
        let key = Keypair::from_secret([9; 32]);
        for answer in [
            Ok(Offer {
                queue_us: 1,
                compute_us: 2,
                transfer_us: 3,
                cost_micros: 4,
                energy_uj: 5,
                cached: true,
            }),
            Err("queue full (64 of 64)".to_owned()),
        ] {
            let body = BidBody {
                job: [1; 32],
                bidder: key.public(),
                answer,
            };
            let signed = Signed::sign(body.clone(), &key);
            assert_eq!(
                SignedBid::decode_verified(&signed.encode()).unwrap().body(),
                &body
            );
            assert_eq!(check_bidder(&signed, &key.public().peer_id()), Ok(()));
            let other = Keypair::from_secret([8; 32]);
            assert!(check_bidder(&signed, &other.public().peer_id()).is_err());
            // Claimed by one key, signed by another.
            let forged = Signed::sign(body, &other);
            assert!(SignedBid::decode_verified(&forged.encode()).is_err());
        }
    }

    #[test]
    fn implausible_offers_and_calls_do_not_decode() {
        let key = Keypair::from_secret([9; 32]);
        let good = Offer {
            queue_us: 0,
            compute_us: 1,
            transfer_us: 0,
            cost_micros: COST_MICROS_MAX,
            energy_uj: ENERGY_UJ_MAX,
            cached: false,
        };
        let bid = |o: Offer| {
            let body = BidBody {
                job: [1; 32],
                bidder: key.public(),
                answer: Ok(o),
            };
            SignedBid::decode_verified(&Signed::sign(body, &key).encode())
        };
        assert!(bid(good).is_ok());
        for (field, bad) in [
            (
                "energy_uj",
                Offer {
                    energy_uj: u64::MAX - 5,
                    ..good
                },
            ),
            (
                "cost_micros",
                Offer {
                    cost_micros: u64::MAX,
                    ..good
                },
            ),
            (
                "compute_us",
                Offer {
                    compute_us: 0,
                    ..good
                },
            ),
            (
                "compute_us",
                Offer {
                    compute_us: TIME_US_MAX + 1,
                    ..good
                },
            ),
            (
                "queue_us",
                Offer {
                    queue_us: u64::MAX,
                    ..good
                },
            ),
            (
                "transfer_us",
                Offer {
                    transfer_us: u64::MAX,
                    ..good
                },
            ),
        ] {
            let e = bid(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        for edit in [
            (|c: &mut BidRequest| c.replicas = 0) as fn(&mut BidRequest),
            |c| c.replicas = REPLICAS_MAX + 1,
            |c| c.deadline_us = u64::MAX,
            |c| c.reference_latency_us = 0,
            |c| c.input_bytes = u64::MAX,
            |c| c.max_cost_micros = Some(u64::MAX),
        ] {
            let mut c = call();
            edit(&mut c);
            assert!(BidRequest::decode(&c.encode()).is_err(), "{c:?}");
        }
    }

    #[test]
    fn malformed_calls_are_refused() {
        let mut c = call();
        c.tiers = vec![7];
        assert!(BidRequest::decode(&c.encode()).is_err());
        let mut c = call();
        c.labels = vec!["x".into(); NAMES_MAX + 1];
        assert!(BidRequest::decode(&c.encode()).is_err());
        assert!(BidRequest::decode(&vec![0x80; BID_REQUEST_BYTES_MAX + 1]).is_err());
        assert!(BidRequest::decode(b"\xff").is_err());
    }
}
