//! Bearer tokens: which requests may be served when the server has some.

use subtle::ConstantTimeEq;

use crate::api_error::ApiError;

/// Bearer tokens, compared in constant time.
pub(crate) struct Auth {
    tokens: Vec<Vec<u8>>,
}

impl Auth {
    /// Accepts any of `tokens`; none: every request is let in.
    pub(crate) fn new(tokens: &[String]) -> Self {
        Auth {
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }

    pub(crate) fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `authorization` header value.
    pub(crate) fn check(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let unauthenticated = |why: &str| ApiError::new(401, "unauthenticated", why.to_string());
        let header = header.ok_or_else(|| unauthenticated("this server needs `Authorization: Bearer <token>`"))?;
        let given = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer <token>`"))?;
        // Every token is compared, whatever matched, so the time taken
        // does not tell which (or whether one) did.
        let mut ok = subtle::Choice::from(0);
        for t in &self.tokens {
            ok |= t.as_slice().ct_eq(given);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(unauthenticated("the token is not accepted"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = Auth {
            tokens: vec![b"alpha".to_vec(), b"beta-token".to_vec()],
        };
        assert!(auth.check(Some(b"Bearer alpha")).is_ok());
        assert!(auth.check(Some(b"Bearer beta-token")).is_ok());
        for bad in [
            &b"Bearer alph"[..],
            b"Bearer alphaa",
            b"alpha",
            b"Basic YWxwaGE=",
            b"Bearer ",
        ] {
            let e = auth.check(Some(bad)).expect_err("refused");
            assert_eq!((e.status, e.kind), (401, "unauthenticated"));
            assert!(!e.message.contains("alpha"), "{}", e.message);
        }
        assert_eq!(auth.check(None).expect_err("missing").status, 401);
        let open = Auth { tokens: vec![] };
        assert!(!open.required() && open.check(None).is_ok());
    }
}
