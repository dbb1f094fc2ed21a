//! Ask OpenAI-style upstreams for usage in streams, and hide it from clients that did not
//! ask (the layer itself comes with the metering work).

/// Set on a request by [`IncludeUsageLayer`](crate) when it added
/// `stream_options.include_usage` that the client did not ask for. The usage observer then
/// keeps the upstream's usage-only chunk from the client while still reading its usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageInjected;
