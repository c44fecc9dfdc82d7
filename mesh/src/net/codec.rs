//! Request-response framing: one canonical CBOR value per stream direction, read to the end
//! with a size cap, decoded (and for bids signature-checked) before the event loop sees it.

use super::*;

/// A request-response message: canonical CBOR with a size cap.
pub trait Frame: Sized + Send + 'static {
    /// Largest encoding read from the wire.
    const BYTES_MAX: usize;
    fn encode_frame(&self) -> Vec<u8>;
    fn decode_frame(bytes: &[u8]) -> Result<Self, String>;
}

macro_rules! frame {
    ($t:ty, $max:expr) => {
        impl Frame for $t {
            const BYTES_MAX: usize = $max;
            fn encode_frame(&self) -> Vec<u8> {
                self.encode()
            }
            fn decode_frame(bytes: &[u8]) -> Result<Self, String> {
                Self::decode(bytes).map_err(|e| e.to_string())
            }
        }
    };
}

frame!(SyncRequest, SYNC_REQUEST_BYTES_MAX);
frame!(SyncResponse, SYNC_RESPONSE_BYTES_MAX);
frame!(ExecRequest, EXEC_REQUEST_BYTES_MAX);
frame!(ExecResponse, EXEC_RESPONSE_BYTES_MAX);
frame!(BidRequest, BID_REQUEST_BYTES_MAX);

/// A bid answer is verified as it is read: signature by the key it names.
impl Frame for SignedBid {
    const BYTES_MAX: usize = BID_RESPONSE_BYTES_MAX;
    fn encode_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn decode_frame(bytes: &[u8]) -> Result<Self, String> {
        SignedBid::decode_verified(bytes).map_err(|e| e.to_string())
    }
}

/// Request-response frames for `/fabnode/ledger-sync/1` and `/fabnode/exec/1`: one canonical
/// CBOR value per stream direction, read to the end with a size cap.
pub struct CborCodec<Req, Resp>(std::marker::PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for CborCodec<Req, Resp> {
    fn default() -> Self {
        CborCodec(std::marker::PhantomData)
    }
}

impl<Req, Resp> std::fmt::Debug for CborCodec<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CborCodec")
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

pub(super) async fn read_capped<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message over the size limit",
        ));
    }
    Ok(buf)
}

pub(super) async fn read_frame<F: Frame, T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<F> {
    let bytes = read_capped(io, F::BYTES_MAX).await?;
    F::decode_frame(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

pub(super) async fn write_frame<F: Frame, T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    frame: F,
) -> std::io::Result<()> {
    io.write_all(&frame.encode_frame()).await?;
    io.close().await
}

impl<Req: Frame, Resp: Frame> request_response::Codec for CborCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Req> {
        read_frame(io).await
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Resp> {
        read_frame(io).await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> std::io::Result<()> {
        write_frame(io, req).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> std::io::Result<()> {
        write_frame(io, res).await
    }
}

pub(super) type SyncCodec = CborCodec<SyncRequest, SyncResponse>;
pub(super) type ExecCodec = CborCodec<ExecRequest, ExecResponse>;
pub(super) type BidCodec = CborCodec<BidRequest, SignedBid>;
