//! Timing through the whole layer, on paused time so that every instant is exact:
//! inter-token percentiles of fixed delays, and the time per output token and token rate of
//! streams too fast (or too bunched) to divide by.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::Empty;
use support::body::{Item, Reports, channel, collect, response, serve_with};
use tokio::sync::mpsc::UnboundedSender;
use tower_sse::{Observer, SseLayer, StreamReport, Timing, TimingObserver, UsageObserver};

fn chunk(delta: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
    )
}

fn usage(output_tokens: u64) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{output_tokens},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        output_tokens + 10
    )
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// What the upstream task sends, frame by frame.
struct Feed(UnboundedSender<Item>);

impl Feed {
    fn send(&self, frame: String) {
        self.0.send(Ok(Frame::data(Bytes::from(frame)))).unwrap();
    }
}

/// Run one OpenAI Chat stream through `observer`, the upstream fed by `feed`; returns the
/// report.
async fn one_stream<O, F, Fut>(observer: O, feed: F) -> StreamReport
where
    O: Observer + Clone + Send + 'static,
    F: FnOnce(Feed) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let reports = Reports::default();
    let layer = SseLayer::new().observer(observer).on_end(reports.sink());
    let (tx, upstream) = channel();
    let request = Request::post("/v1/chat/completions")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = serve_with(layer, request, response("text/event-stream", upstream))
        .await
        .into_body();
    let driver = tokio::spawn(feed(Feed(tx)));
    collect(body).await;
    driver.await.unwrap();
    reports.one()
}

fn assert_finite(timing: &Timing) {
    if let Some(rate) = timing.output_tokens_per_second {
        assert!(rate.is_finite() && rate > 0.0, "{rate} tokens/s");
    }
    if let Some(tpot) = timing.time_per_output_token {
        assert!(!tpot.is_zero(), "time per output token is 0");
    }
}

#[test]
fn fixed_delays_give_exact_inter_token_percentiles() {
    for delay in [
        Duration::from_millis(7),
        Duration::from_millis(100),
        Duration::from_millis(300),
        Duration::from_secs(2),
    ] {
        let report = paused_runtime().block_on(one_stream(
            (UsageObserver::new(), TimingObserver::new()),
            |feed: Feed| async move {
                for _ in 0..40 {
                    tokio::time::sleep(delay).await;
                    feed.send(chunk(r#"{"content":"x"}"#));
                }
                feed.send(usage(40));
            },
        ));
        let timing = report.timing.unwrap();
        let gaps = timing.inter_token;
        assert_eq!(gaps.count, 39);
        for (name, got) in [
            ("p50", gaps.p50),
            ("p90", gaps.p90),
            ("p99", gaps.p99),
            ("mean", gaps.mean),
            ("max", gaps.max),
        ] {
            assert_eq!(got, Some(delay), "{name} of {delay:?} gaps");
        }
        assert_eq!(timing.decode_time, Some(delay * 39));
        assert_eq!(timing.time_per_output_token, Some(delay));
        let rate = timing.output_tokens_per_second.unwrap();
        let want = 1.0 / delay.as_secs_f64();
        assert!((rate - want).abs() / want < 1e-12, "{rate} vs {want}");
    }
}

#[test]
fn a_fast_stream_has_a_positive_time_per_token_and_a_finite_rate() {
    // Five content frames a microsecond apart, then 10 000 output tokens reported.
    let report = paused_runtime().block_on(one_stream(
        (UsageObserver::new(), TimingObserver::new()),
        |feed: Feed| async move {
            for _ in 0..5 {
                feed.send(chunk(r#"{"content":"x"}"#));
                tokio::time::advance(Duration::from_micros(1)).await;
            }
            feed.send(usage(10_000));
        },
    ));
    let timing = report.timing.unwrap();
    let decode = timing.decode_time.unwrap();
    assert!(
        decode > Duration::ZERO && decode < Duration::from_millis(1),
        "{decode:?}"
    );
    let tpot = timing
        .time_per_output_token
        .expect("tokens and decode time are known");
    assert!(!tpot.is_zero(), "a positive time per token rounded to 0");
    let rate = timing.output_tokens_per_second.unwrap();
    let want = 9_999.0 / decode.as_secs_f64();
    assert!((rate - want).abs() / want < 1e-12, "{rate} vs {want}");
    assert_finite(&timing);
}

#[test]
fn tokens_in_one_frame_have_no_time_per_token() {
    // All content in one upstream frame: no decode time to divide, so no rate.
    let report = paused_runtime().block_on(one_stream(
        (UsageObserver::new(), TimingObserver::new()),
        |feed: Feed| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut frame = String::new();
            for _ in 0..20 {
                frame.push_str(&chunk(r#"{"content":"x"}"#));
            }
            frame.push_str(&usage(20));
            feed.send(frame);
        },
    ));
    let timing = report.timing.unwrap();
    assert_eq!(timing.time_to_first_token, Some(Duration::from_millis(50)));
    assert_eq!(timing.decode_time, Some(Duration::ZERO));
    assert_eq!(timing.time_per_output_token, None);
    assert_eq!(timing.output_tokens_per_second, None);
    assert_eq!(timing.inter_token.count, 19);
    assert_eq!(timing.inter_token.p99, Some(Duration::ZERO));
    assert_finite(&timing);
}

/// The GenAI histograms of a fast stream: a positive time per output token, and no NaN or
/// infinity anywhere.
#[cfg(feature = "metrics")]
#[test]
fn a_fast_stream_records_finite_positive_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_sse::MetricsObserver;
    use tower_sse::metrics::names;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let report = metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(one_stream(
            (
                UsageObserver::new(),
                TimingObserver::new(),
                MetricsObserver::new(),
            ),
            |feed: Feed| async move {
                for _ in 0..5 {
                    feed.send(chunk(r#"{"content":"x"}"#));
                    tokio::time::advance(Duration::from_micros(1)).await;
                }
                feed.send(usage(10_000));
            },
        ))
    });
    assert_finite(&report.timing.unwrap());

    let snapshot = snapshotter.snapshot().into_vec();
    let mut per_token = Vec::new();
    for (key, _, _, value) in &snapshot {
        if let DebugValue::Histogram(values) = value {
            for v in values {
                let v = v.into_inner();
                assert!(v.is_finite(), "{} recorded {v}", key.key().name());
                if key.key().name() == names::SERVER_TIME_PER_OUTPUT_TOKEN {
                    per_token.push(v);
                }
            }
        }
    }
    assert_eq!(per_token.len(), 1, "one time per output token per stream");
    assert!(per_token[0] > 0.0, "time per output token recorded as 0");
}
