//! Request ids: every HTTP request and gRPC call has one, taken from its
//! `x-request-id` header (gRPC metadata) when that is sane, made otherwise.
//! The answer carries it back in `x-request-id`, every log line written
//! while the request is served carries it (the `request_id` field of the
//! request's span), and an error answer names it (`request_id` beside
//! `kind`, and beside `error_id` where the log holds the details).
//!
//! A given id is kept when it is 1 to [`MAX_LEN`] visible ASCII characters
//! (`!` to `~`); anything else (too long, empty, spaces, control
//! characters, other bytes) is replaced by a made one, so that what a
//! client sends can neither forge log lines nor swell them.

use std::future::Future;
use std::sync::Arc;

use tracing::Instrument;

/// The header (and gRPC metadata key) of the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a client.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// A request's id: a sane one the client gave, or a made one (128 random
/// bits in hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(Arc<str>);

impl RequestId {
    /// The client's `x-request-id` when sane, else a new id.
    pub(crate) fn from_header(given: Option<&[u8]>) -> RequestId {
        match given {
            Some(v) if is_sane(v) => RequestId(String::from_utf8_lossy(v).into()),
            _ => RequestId(sf_manifest::format::ids::unique_hex().into()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, shared.
    pub(crate) fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }

    /// The id of the request being served on this task, if any.
    pub(crate) fn current() -> Option<Arc<str>> {
        CURRENT.try_with(|id| id.0.clone()).ok()
    }

    /// `work` as this request's: inside its span (field `request_id`),
    /// with [`current`](Self::current) naming it.
    pub(crate) fn scope<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        // At the error level, so that the span is on whenever any line
        // of the server is: a filter such as `warn,sf_server::audit=info`
        // keeps the request_id on the lines it lets through.
        let span = tracing::error_span!("request", request_id = %self.0);
        CURRENT.scope(self, work).instrument(span)
    }
}

/// `work` carrying the id and span of the request being served here (if
/// any): for a task a request spawns.
pub(crate) fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let id = CURRENT.try_with(Clone::clone).ok();
    let span = tracing::Span::current();
    async move {
        match id {
            Some(id) => CURRENT.scope(id, work).await,
            None => work.await,
        }
    }
    .instrument(span)
}

/// 1 to [`MAX_LEN`] visible ASCII characters.
fn is_sane(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        for ok in [
            "abc",
            "0af7651916cd43dd8448eb211c80319c",
            "a-b_c.d:e/f=",
            &"x".repeat(MAX_LEN),
        ] {
            assert_eq!(RequestId::from_header(Some(ok.as_bytes())).as_str(), ok);
        }
        for bad in [
            &b""[..],
            b"has space",
            b"new\nline",
            b"tab\t",
            b"nul\0",
            b"\x7f",
            "caf\u{e9}".as_bytes(),
            "x".repeat(MAX_LEN + 1).as_bytes(),
        ] {
            let id = RequestId::from_header(Some(bad));
            assert_ne!(id.as_str().as_bytes(), bad);
            assert_eq!(id.as_str().len(), 32, "{id:?}");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let (a, b) = (RequestId::from_header(None), RequestId::from_header(None));
        assert_ne!(a, b, "made ids differ");
    }

    #[tokio::test]
    async fn the_current_id_is_the_scopes() {
        assert_eq!(RequestId::current(), None);
        let id = RequestId::from_header(Some(b"r-1"));
        let seen = id.scope(async { RequestId::current() }).await;
        assert_eq!(seen.as_deref(), Some("r-1"));
    }
}
