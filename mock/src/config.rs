//! Server defaults and per-request controls.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

/// How the bytes of a stream are cut into body frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunking {
    /// One frame per event (one NDJSON line, one JSON-array element).
    #[default]
    Whole,
    /// Frames of random length, from one byte up to several events, drawn from the `seed`
    /// control. Frames cross event boundaries but never wait: bytes ready before a pause
    /// (a token delay, a stall, the end) are sent before it.
    Random,
    /// Frames of exactly this many bytes, crossing event boundaries, except before a pause,
    /// where the shorter rest is sent.
    Fixed(NonZeroUsize),
}

impl Chunking {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "whole" => Ok(Self::Whole),
            "random" => Ok(Self::Random),
            n => n
                .parse::<NonZeroUsize>()
                .map(Self::Fixed)
                .map_err(|_| "expected `whole`, `random` or a byte count above 0".to_owned()),
        }
    }
}

impl fmt::Display for Chunking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Whole => f.write_str("whole"),
            Self::Random => f.write_str("random"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// What one response does. Server-wide defaults live in [`MockConfig::controls`]; each
/// request may override any of them (see the crate docs for the names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    /// Content tokens to generate (`tokens`).
    pub tokens: u32,
    /// Pause before each content token (`delay_ms`).
    pub delay: Duration,
    /// Pause before the response headers (`headers_delay_ms`).
    pub headers_delay: Duration,
    /// How the bytes are cut into frames (`chunking`).
    pub chunking: Chunking,
    /// Seeds the token words and random chunking (`seed`).
    pub seed: u64,
    /// Stop sending after this many events and hold the connection open (`stall_after`).
    pub stall_after: Option<u32>,
    /// Send the format's in-band error event after this many events, then end (`error_after`).
    pub error_after: Option<u32>,
    /// After this many events, send half of the next one and abort the connection
    /// (`close_after`).
    pub close_after: Option<u32>,
    /// Answer this HTTP status instead; a non-2xx status comes with the format's JSON error
    /// body (`status`).
    pub status: Option<u16>,
}

impl Default for Controls {
    fn default() -> Self {
        Self {
            tokens: 16,
            delay: Duration::ZERO,
            headers_delay: Duration::ZERO,
            chunking: Chunking::Whole,
            seed: 0,
            stall_after: None,
            error_after: None,
            close_after: None,
            status: None,
        }
    }
}

/// A control value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    /// The control's name, as given.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mock control `{}`: {}", self.name, self.reason)
    }
}

impl std::error::Error for ControlError {}

/// One documented control: its names, values and default.
#[derive(Debug, Clone, Copy)]
pub struct ControlInfo {
    /// The key inside the request's `"mock"` object (and the `--name` flag of the example,
    /// with `-` for `_`).
    pub name: &'static str,
    /// The request header; it wins over the JSON key.
    pub header: &'static str,
    /// The accepted values.
    pub values: &'static str,
    /// The default when neither the server nor the request sets it.
    pub default: &'static str,
    /// What it does.
    pub about: &'static str,
}

/// Every control, in the order the help lists them.
pub const CONTROLS: &[ControlInfo] = &[
    ControlInfo {
        name: "tokens",
        header: "x-mock-tokens",
        values: "integer",
        default: "16",
        about: "content tokens to generate",
    },
    ControlInfo {
        name: "delay_ms",
        header: "x-mock-delay-ms",
        values: "milliseconds",
        default: "0",
        about: "pause before each content token",
    },
    ControlInfo {
        name: "headers_delay_ms",
        header: "x-mock-headers-delay-ms",
        values: "milliseconds",
        default: "0",
        about: "pause before the response headers",
    },
    ControlInfo {
        name: "chunking",
        header: "x-mock-chunking",
        values: "whole | random | N",
        default: "whole",
        about: "one frame per event, random frame sizes (seeded), or N-byte frames",
    },
    ControlInfo {
        name: "seed",
        header: "x-mock-seed",
        values: "integer",
        default: "0",
        about: "seeds the token words and random chunking",
    },
    ControlInfo {
        name: "stall_after",
        header: "x-mock-stall-after",
        values: "N | none",
        default: "none",
        about: "after N events send nothing more and keep the connection open",
    },
    ControlInfo {
        name: "error_after",
        header: "x-mock-error-after",
        values: "N | none",
        default: "none",
        about: "after N events send the format's in-band error event, then end",
    },
    ControlInfo {
        name: "close_after",
        header: "x-mock-close-after",
        values: "N | none",
        default: "none",
        about: "after N events send half of the next one, then abort the connection",
    },
    ControlInfo {
        name: "status",
        header: "x-mock-status",
        values: "HTTP status | none",
        default: "none",
        about: "answer this status; non-2xx comes with the format's JSON error body",
    },
];

impl Controls {
    /// Set one control by name (`tokens`, `delay_ms`, ...; `-` may stand for `_`) from its
    /// text form, as a header or command-line flag gives it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ControlError> {
        let key = name.replace('-', "_");
        let value = value.trim();
        let error = |reason: String| ControlError {
            name: name.to_owned(),
            reason,
        };
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| error(format!("expected a whole number, got `{value}`")))
        };
        let count = |value: &str| {
            value
                .parse::<u32>()
                .map_err(|_| error(format!("expected a whole number, got `{value}`")))
        };
        let optional_count = |value: &str| match value {
            "none" | "off" => Ok(None),
            n => count(n).map(Some),
        };
        match key.as_str() {
            "tokens" => self.tokens = count(value)?,
            "delay_ms" => self.delay = Duration::from_millis(number(value)?),
            "headers_delay_ms" => self.headers_delay = Duration::from_millis(number(value)?),
            "chunking" => self.chunking = Chunking::parse(value).map_err(error)?,
            "seed" => self.seed = number(value)?,
            "stall_after" => self.stall_after = optional_count(value)?,
            "error_after" => self.error_after = optional_count(value)?,
            "close_after" => self.close_after = optional_count(value)?,
            "status" => {
                self.status = match value {
                    "none" | "off" => None,
                    code => Some(
                        code.parse::<u16>()
                            .ok()
                            .filter(|code| (100..=999).contains(code))
                            .ok_or_else(|| {
                                error(format!("expected an HTTP status, got `{code}`"))
                            })?,
                    ),
                }
            }
            _ => {
                let known: Vec<_> = CONTROLS.iter().map(|c| c.name).collect();
                return Err(error(format!(
                    "unknown control; known: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The fault that fires first, if any: the smallest count wins; on a tie `close_after`
    /// beats `error_after`, which beats `stall_after`.
    pub(crate) fn fault(&self) -> Option<Fault> {
        [
            self.close_after.map(|after| Fault {
                after,
                kind: FaultKind::Close,
            }),
            self.error_after.map(|after| Fault {
                after,
                kind: FaultKind::Error,
            }),
            self.stall_after.map(|after| Fault {
                after,
                kind: FaultKind::Stall,
            }),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|fault| fault.after)
    }
}

/// A fault resolved for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) after: u32,
    pub(crate) kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Stall,
    Error,
    Close,
}

/// Server-wide settings: the default controls, the default model and the fixed timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct MockConfig {
    /// The controls a request gets unless it overrides them.
    pub controls: Controls,
    /// The model named in responses when the request names none.
    pub model: String,
    /// The `created` timestamp (Unix seconds) of every response: fixed, so that the same
    /// request always gives the same bytes.
    pub created: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            controls: Controls::default(),
            model: "mock-model".to_owned(),
            created: 1_750_000_000,
        }
    }
}

impl MockConfig {
    /// The defaults: 16 tokens, no delays, whole frames, no faults, `mock-model`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Default number of content tokens.
    pub fn tokens(mut self, tokens: u32) -> Self {
        self.controls.tokens = tokens;
        self
    }

    /// Default pause before each content token.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.controls.delay = delay;
        self
    }

    /// Default pause before the response headers.
    pub fn headers_delay(mut self, delay: Duration) -> Self {
        self.controls.headers_delay = delay;
        self
    }

    /// Default chunking.
    pub fn chunking(mut self, chunking: Chunking) -> Self {
        self.controls.chunking = chunking;
        self
    }

    /// Default seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.controls.seed = seed;
        self
    }

    /// Default `stall_after`.
    pub fn stall_after(mut self, events: u32) -> Self {
        self.controls.stall_after = Some(events);
        self
    }

    /// Default `error_after`.
    pub fn error_after(mut self, events: u32) -> Self {
        self.controls.error_after = Some(events);
        self
    }

    /// Default `close_after`.
    pub fn close_after(mut self, events: u32) -> Self {
        self.controls.close_after = Some(events);
        self
    }

    /// Default `status`.
    pub fn status(mut self, status: u16) -> Self {
        self.controls.status = Some(status);
        self
    }

    /// The model named when a request names none.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Set a default control by name, as [`Controls::set`].
    pub fn control(mut self, name: &str, value: &str) -> Result<Self, ControlError> {
        self.controls.set(name, value)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_every_control() {
        let mut c = Controls::default();
        c.set("tokens", "3").unwrap();
        c.set("delay-ms", "5").unwrap();
        c.set("headers_delay_ms", "7").unwrap();
        c.set("chunking", "12").unwrap();
        c.set("seed", "9").unwrap();
        c.set("stall_after", "4").unwrap();
        c.set("error_after", "2").unwrap();
        c.set("close_after", "none").unwrap();
        c.set("status", "429").unwrap();
        assert_eq!(c.tokens, 3);
        assert_eq!(c.delay, Duration::from_millis(5));
        assert_eq!(c.headers_delay, Duration::from_millis(7));
        assert_eq!(c.chunking, Chunking::Fixed(NonZeroUsize::new(12).unwrap()));
        assert_eq!(c.seed, 9);
        assert_eq!(c.status, Some(429));
        assert_eq!(
            c.fault(),
            Some(Fault {
                after: 2,
                kind: FaultKind::Error
            })
        );
        assert!(c.set("chunking", "0").is_err());
        assert!(c.set("tokns", "1").is_err());
        assert!(c.set("status", "42").is_err());
    }

    #[test]
    fn close_wins_a_tie() {
        let c = Controls {
            stall_after: Some(1),
            error_after: Some(1),
            close_after: Some(1),
            ..Controls::default()
        };
        assert_eq!(c.fault().unwrap().kind, FaultKind::Close);
    }
}
