//! What each admin request gets. [`decide`] is a pure function of the
//! method, the path and who asks; [`route`] carries the decision out on the
//! server's [`Control`].

use crate::control::Control;
use crate::forensics::StackError;

/// An admin answer, before it is written out.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: Vec<u8>,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec() }
    }
}

/// Who is asking, for the state-changing routes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Access<'a> {
    pub(super) peer_is_local: bool,
    pub(super) token: Option<&'a str>,
    pub(super) authorization: Option<&'a str>,
}

impl Access<'_> {
    /// With a token configured, it is required from everyone; without one,
    /// only loopback peers may change state.
    fn may_change_state(&self) -> bool {
        match self.token {
            Some(token) => self
                .authorization
                .and_then(bearer_credentials)
                .is_some_and(|sent| constant_time_eq(sent.as_bytes(), token.as_bytes())),
            None => self.peer_is_local,
        }
    }
}

/// The credentials of an `Authorization: Bearer ...` value (the scheme is
/// case-insensitive, RFC 9110 11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// Compares without an early exit, so the time taken tells nothing about
/// how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an admin request asks for, once it is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Metrics,
    Loops,
    Healthz,
    Readyz,
    RecycleAll,
    Recycle(usize),
    Stalls,
    /// A loop's stack now: its slot, and a generation if one is named.
    Stack(usize, Option<u32>),
}

/// `3` (the slot's current loop) or `3.2` (slot 3, generation 2).
fn parse_loop(text: &str) -> Option<(usize, Option<u32>)> {
    match text.split_once('.') {
        Some((slot, generation)) => Some((slot.parse().ok()?, Some(generation.parse().ok()?))),
        None => Some((text.parse().ok()?, None)),
    }
}

/// The action a request asks for, or the refusal it gets.
pub(super) fn decide(method: &str, path: &str, access: Access<'_>) -> Result<Action, Answer> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read_only = |action| {
        if method == "GET" {
            Ok(action)
        } else {
            Err(Answer::text(405, "method not allowed: use GET\n"))
        }
    };
    let recycle = |action| {
        if method != "POST" {
            Err(Answer::text(405, "method not allowed: use POST\n"))
        } else if !access.may_change_state() {
            Err(Answer::text(
                403,
                "forbidden: state-changing routes need loopback or the admin token\n",
            ))
        } else {
            action
        }
    };
    match segments.as_slice() {
        ["metrics"] => read_only(Action::Metrics),
        ["loops"] => read_only(Action::Loops),
        ["healthz"] => read_only(Action::Healthz),
        ["readyz"] => read_only(Action::Readyz),
        ["stalls"] => read_only(Action::Stalls),
        ["loops", which, "stack"] => match parse_loop(which) {
            Some((slot, generation)) => read_only(Action::Stack(slot, generation)),
            None => {
                Err(Answer::text(404, &format!("no loop {which}: use SLOT or SLOT.GENERATION\n")))
            }
        },
        ["loops", "recycle"] => recycle(Ok(Action::RecycleAll)),
        ["loops", slot, "recycle"] => recycle(
            slot.parse()
                .map(Action::Recycle)
                .map_err(|_| Answer::text(404, &format!("no loop in slot {slot}\n"))),
        ),
        _ => Err(Answer::text(
            404,
            "not found: try /metrics, /loops, /loops/SLOT/stack, /stalls, /healthz, /readyz\n",
        )),
    }
}

/// Answers an admin request.
pub(super) fn route(method: &str, path: &str, access: Access<'_>, control: &Control) -> Answer {
    match decide(method, path, access) {
        Ok(action) => perform(action, control),
        Err(refusal) => refusal,
    }
}

fn perform(action: Action, control: &Control) -> Answer {
    match action {
        Action::Metrics => Answer {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: {
                let mut page = super::metrics::render(&control.snapshot());
                (control.server().service_metrics.0)(&mut page);
                page.into_bytes()
            },
        },
        Action::Loops => {
            control.symbolize_stacks();
            json(&control.snapshot())
        }
        Action::Healthz if control.is_healthy() => Answer::text(200, "ok\n"),
        Action::Healthz => {
            Answer::text(503, "unhealthy: no loop serving, or the abandoned budget is used up\n")
        }
        Action::Readyz if control.is_ready() => Answer::text(200, "ready\n"),
        Action::Readyz => Answer::text(503, "not ready: shutting down\n"),
        Action::Stalls => json(&control.stalls()),
        Action::Stack(slot, generation) => match control.stack(slot, generation) {
            Ok(stack) => json(&stack),
            Err(StackError::UnknownLoop) => Answer::text(404, "no such loop\n"),
            Err(err) => Answer::text(503, &format!("{err}\n")),
        },
        Action::RecycleAll => {
            control.recycle_all();
            Answer::text(202, "recycling every loop\n")
        }
        Action::Recycle(slot) => match control.recycle(slot) {
            Ok(()) => Answer::text(202, &format!("recycling loop {slot}\n")),
            Err(_) => Answer::text(404, &format!("no loop in slot {slot}\n")),
        },
    }
}

fn json(value: &impl serde::Serialize) -> Answer {
    Answer {
        status: 200,
        content_type: "application/json",
        body: serde_json::to_vec_pretty(value).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";

    fn local() -> Access<'static> {
        Access { peer_is_local: true, token: None, authorization: None }
    }

    fn status(result: Result<Action, Answer>) -> Result<Action, u16> {
        result.map_err(|answer| answer.status)
    }

    #[test]
    fn read_only_routes_take_get_only() {
        assert_eq!(status(decide("GET", "/metrics", local())), Ok(Action::Metrics));
        assert_eq!(status(decide("GET", "/loops/", local())), Ok(Action::Loops));
        assert_eq!(status(decide("GET", "/healthz?verbose", local())), Ok(Action::Healthz));
        assert_eq!(status(decide("POST", "/readyz", local())), Err(405));
        assert_eq!(status(decide("GET", "/nope", local())), Err(404));
    }

    #[test]
    fn recycle_takes_post_and_a_slot_number() {
        assert_eq!(status(decide("POST", "/loops/recycle", local())), Ok(Action::RecycleAll));
        assert_eq!(status(decide("POST", "/loops/3/recycle", local())), Ok(Action::Recycle(3)));
        assert_eq!(status(decide("GET", "/loops/3/recycle", local())), Err(405));
        assert_eq!(status(decide("POST", "/loops/x/recycle", local())), Err(404));
    }

    #[test]
    fn without_a_token_only_loopback_may_change_state() {
        let remote = Access { peer_is_local: false, ..local() };
        assert_eq!(status(decide("POST", "/loops/recycle", remote)), Err(403));
        assert_eq!(status(decide("GET", "/metrics", remote)), Ok(Action::Metrics));
    }

    #[test]
    fn with_a_token_everyone_needs_it() {
        let with =
            |authorization| Access { peer_is_local: true, token: Some(TOKEN), authorization };
        assert!(!with(None).may_change_state(), "loopback alone is not enough");
        assert!(with(Some("Bearer 0123456789abcdef")).may_change_state());
        assert!(
            with(Some("bearer  0123456789abcdef ")).may_change_state(),
            "scheme is case-insensitive"
        );
        assert!(!with(Some("Bearer 0123456789abcdeX")).may_change_state());
        assert!(!with(Some("Bearer 0123456789abcde")).may_change_state());
        assert!(!with(Some("Basic 0123456789abcdef")).may_change_state());
        assert!(!with(Some("0123456789abcdef")).may_change_state());
    }
}
