//! Bearer tokens and roles: who may read, and who may also administer
//! (roll back).
//!
//! Tokens are held as SHA-256 digests only. A given token is hashed and
//! its digest compared, in constant time, with every stored digest, so
//! neither the time taken nor anything else tells which token (or whether
//! one) matched, or how long a stored token is. Logs name a caller by the
//! [`fingerprint`] of its token, never by the token.
//!
//! The token sets can be replaced while the server runs ([`Auth::replace`],
//! on a reload); each request reads the set of the moment.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;

/// What a token may do. An admin token may also read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Lookups, listings, `/metrics`.
    Read,
    /// Reads, and the admin routes (rollback).
    Admin,
}

/// Who sent a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The token's role; `None` on a server without tokens.
    pub(crate) role: Option<Role>,
    /// The token's [`fingerprint`], for logs; `None` without a token.
    pub(crate) fingerprint: Option<String>,
}

impl Caller {
    /// How logs name the caller: its token's fingerprint, or `anonymous`.
    pub(crate) fn name(&self) -> &str {
        self.fingerprint.as_deref().unwrap_or("anonymous")
    }
}

type Sha = [u8; 32];

fn digest(token: &[u8]) -> Sha {
    Sha256::digest(token).into()
}

/// How logs name a token: `sha256:` and the first 12 hex digits of its
/// SHA-256 digest. Enough to tell the tokens of a file apart and to find
/// which line of the file a caller used (`sha256sum` of the line without
/// its newline); not the token.
#[cfg(test)]
pub(crate) fn fingerprint(token: &str) -> String {
    fingerprint_of(&digest(token.as_bytes()))
}

/// The fingerprint of the token whose digest is `d`; see `fingerprint`.
fn fingerprint_of(d: &Sha) -> String {
    format!("sha256:{}", hex::encode(&d[..6]))
}

/// The tokens of one moment: the digests of the read tokens and of the
/// admin tokens.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Tokens {
    read: Vec<Sha>,
    admin: Vec<Sha>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("read", &format_args!("<{} tokens>", self.read.len()))
            .field("admin", &format_args!("<{} tokens>", self.admin.len()))
            .finish()
    }
}

impl Tokens {
    /// `read` tokens may read; `admin` tokens may read and administer.
    /// None of either: every read is let in and no admin route is.
    pub(crate) fn new(read: &[String], admin: &[String]) -> Self {
        let digests = |list: &[String]| list.iter().map(|t| digest(t.as_bytes())).collect();
        Tokens {
            read: digests(read),
            admin: digests(admin),
        }
    }

    /// Whether the server has no token at all (then it authenticates no one).
    pub(crate) fn is_empty(&self) -> bool {
        self.read.is_empty() && self.admin.is_empty()
    }

    /// How many read and admin tokens there are.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.read.len(), self.admin.len())
    }

    /// The role of the token `given`, if it is one of ours. Every stored
    /// digest is compared, whatever matched, each over its full 32 bytes.
    fn role_of(&self, given: &[u8]) -> (Option<Role>, Sha) {
        let d = digest(given);
        let mut read = subtle::Choice::from(0);
        for t in &self.read {
            read |= t.ct_eq(&d);
        }
        let mut admin = subtle::Choice::from(0);
        for t in &self.admin {
            admin |= t.ct_eq(&d);
        }
        let role = if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(read) {
            Some(Role::Read)
        } else {
            None
        };
        (role, d)
    }

    /// Checks an `authorization` header value: the caller, or 401.
    pub(crate) fn check(&self, header: Option<&[u8]>) -> Result<Caller, ApiError> {
        if self.is_empty() {
            return Ok(Caller {
                role: None,
                fingerprint: None,
            });
        }
        let unauthenticated = |why: &str| ApiError::new(401, "unauthenticated", why.to_string());
        let header = header.ok_or_else(|| unauthenticated("this server needs `Authorization: Bearer <token>`"))?;
        let given = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer <token>`"))?;
        match self.role_of(given) {
            (Some(role), d) => Ok(Caller {
                role: Some(role),
                fingerprint: Some(fingerprint_of(&d)),
            }),
            (None, _) => Err(unauthenticated("the token is not accepted")),
        }
    }
}

/// Whether `caller` may use an admin route of a server with `tokens`
/// (whose admin routes are on): 403 `admin_disabled` on a server without
/// tokens, 403 `forbidden` for a read token.
pub(crate) fn require_admin(tokens: &Tokens, caller: &Caller) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return Err(ApiError::new(
            403,
            "admin_disabled",
            "admin routes need authentication: start the server with --admin-token-file",
        ));
    }
    match caller.role {
        Some(Role::Admin) => Ok(()),
        _ => Err(ApiError::new(
            403,
            "forbidden",
            "this token may read but not administer: admin routes need a token of --admin-token-file",
        )),
    }
}

/// The server's tokens, replaceable while it runs; cheap to read per
/// request (a read lock held for an `Arc` clone).
#[derive(Debug)]
pub(crate) struct Auth {
    tokens: RwLock<Arc<Tokens>>,
}

impl Auth {
    pub(crate) fn new(tokens: Tokens) -> Self {
        Auth {
            tokens: RwLock::new(Arc::new(tokens)),
        }
    }

    /// The tokens of this moment.
    pub(crate) fn tokens(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Puts `tokens` in place for every request from now on.
    pub(crate) fn replace(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(read: &[&str], admin: &[&str]) -> Tokens {
        let own = |l: &[&str]| l.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        Tokens::new(&own(read), &own(admin))
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = tokens(&["alpha", "beta-token"], &[]);
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
        let open = tokens(&[], &[]);
        assert!(open.is_empty());
        assert_eq!(
            open.check(None).expect("open"),
            Caller {
                role: None,
                fingerprint: None
            }
        );
    }

    #[test]
    fn roles_an_admin_token_reads_too_and_a_read_token_cannot_administer() {
        let t = tokens(&["reader"], &["boss"]);
        let reader = t.check(Some(b"Bearer reader")).expect("read token");
        let boss = t.check(Some(b"Bearer boss")).expect("admin token");
        assert_eq!(reader.role, Some(Role::Read));
        assert_eq!(boss.role, Some(Role::Admin));
        assert!(require_admin(&t, &boss).is_ok());
        let e = require_admin(&t, &reader).expect_err("a read token");
        assert_eq!((e.status, e.kind), (403, "forbidden"));
        // A token in both files is an admin token.
        let both = tokens(&["same"], &["same"]);
        assert_eq!(both.check(Some(b"Bearer same")).expect("both").role, Some(Role::Admin));
        // Admin tokens alone: reads need one of them.
        let admin_only = tokens(&[], &["boss"]);
        assert_eq!(admin_only.check(None).expect_err("no token").status, 401);
        assert_eq!(
            admin_only.check(Some(b"Bearer boss")).expect("boss").role,
            Some(Role::Admin)
        );
        // Read tokens alone: nobody administers.
        let read_only = tokens(&["reader"], &[]);
        let caller = read_only.check(Some(b"Bearer reader")).expect("reader");
        assert_eq!(
            require_admin(&read_only, &caller).expect_err("no admin").kind,
            "forbidden"
        );
        // No tokens at all: reads are open, admin routes are refused.
        let open = tokens(&[], &[]);
        let anyone = open.check(None).expect("open");
        assert_eq!(require_admin(&open, &anyone).expect_err("open").kind, "admin_disabled");
    }

    #[test]
    fn digests_are_fixed_length_and_fingerprints_hide_the_token() {
        let t = tokens(&["a", &"long-token-".repeat(40)], &[]);
        assert!(t.read.iter().all(|d| d.len() == 32));
        let f = fingerprint("secret-alpha");
        assert!(f.starts_with("sha256:") && f.len() == "sha256:".len() + 12, "{f}");
        assert!(!f.contains("secret"), "{f}");
        assert_ne!(f, fingerprint("secret-beta"));
        // The caller's fingerprint is its token's.
        let t = tokens(&["secret-alpha"], &[]);
        let c = t.check(Some(b"Bearer secret-alpha")).expect("ok");
        assert_eq!(c.fingerprint.as_deref(), Some(f.as_str()));
        assert_eq!(c.name(), f);
        // The debug form counts, never shows.
        let shown = format!("{t:?}");
        assert!(shown.contains("<1 tokens>") && !shown.contains("secret"), "{shown}");
    }

    #[test]
    fn a_replaced_set_takes_effect_for_the_next_check() {
        let auth = Auth::new(tokens(&["old"], &[]));
        assert!(auth.tokens().check(Some(b"Bearer old")).is_ok());
        auth.replace(tokens(&["new"], &[]));
        assert!(auth.tokens().check(Some(b"Bearer old")).is_err());
        assert!(auth.tokens().check(Some(b"Bearer new")).is_ok());
    }
}
