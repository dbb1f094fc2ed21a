//! The OpenTelemetry GenAI metrics, checked with a debugging recorder: names, units,
//! attributes and values, on paused time so the values are exact.

#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::Empty;
use metrics::Unit;
use metrics_util::debugging::DebugValue;
use support::body::{channel, collect, response, serve_with};
use tokio::time::sleep;
use tower_sse::MetricsObserver;
use tower_sse::metrics::{describe, names};
use tower_sse::{SseLayer, TimingObserver, UsageObserver};

fn chunk(delta: &str, extra: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{extra}}}]}}\n\n"
    )
}

/// One chat stream: role chunk at 100 ms, content at 150 ms and 170 ms, then usage.
async fn one_stream() {
    let layer = SseLayer::new().observer((
        UsageObserver::new(),
        TimingObserver::new(),
        MetricsObserver::new(),
    ));
    let (tx, upstream) = channel();
    let request = Request::post("/v1/chat/completions")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = serve_with(layer, request, response("text/event-stream", upstream))
        .await
        .into_body();
    let driver = tokio::spawn(async move {
        let send = |s: String| tx.send(Ok(Frame::data(Bytes::from(s)))).unwrap();
        sleep(Duration::from_millis(100)).await;
        send(chunk(r#"{"role":"assistant","content":""}"#, "null"));
        sleep(Duration::from_millis(50)).await;
        send(chunk(r#"{"content":"Hel"}"#, "null"));
        sleep(Duration::from_millis(20)).await;
        send(chunk(r#"{"content":"lo"}"#, "null"));
        send(chunk("{}", "\"stop\""));
        send("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"total_tokens\":12}}\n\ndata: [DONE]\n\n".into());
    });
    collect(body).await;
    driver.await.unwrap();
}

#[test]
fn genai_metrics_have_their_names_units_attributes_and_values() {
    let snapshot = support::metrics::recorded(true, || async {
        describe();
        (async { one_stream().await }).await
    });

    let find = |name: &str, label: Option<(&str, &str)>| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && label.is_none_or(|(k, v)| {
                        key.key().labels().any(|l| l.key() == k && l.value() == v)
                    })
            })
            .unwrap_or_else(|| panic!("{name} {label:?} not recorded"))
    };
    let histogram = |name: &str, label: Option<(&str, &str)>| match &find(name, label).3 {
        DebugValue::Histogram(values) => {
            values.iter().map(|v| v.into_inner()).collect::<Vec<f64>>()
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    };
    let close = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    };

    // Time from the request's arrival to the end, to the first content chunk, between chunks.
    close(&histogram(names::CLIENT_OPERATION_DURATION, None), &[0.170]);
    close(
        &histogram(names::CLIENT_TIME_TO_FIRST_CHUNK, None),
        &[0.150],
    );
    close(
        &histogram(names::CLIENT_TIME_PER_OUTPUT_CHUNK, None),
        &[0.020],
    );
    close(
        &histogram(names::SERVER_TIME_TO_FIRST_TOKEN, None),
        &[0.150],
    );
    // (last - first content) / (output tokens - 1) = 0.020 / 1.
    close(
        &histogram(names::SERVER_TIME_PER_OUTPUT_TOKEN, None),
        &[0.020],
    );
    close(
        &histogram(
            names::CLIENT_TOKEN_USAGE,
            Some(("gen_ai.token.type", "input")),
        ),
        &[10.0],
    );
    close(
        &histogram(
            names::CLIENT_TOKEN_USAGE,
            Some(("gen_ai.token.type", "output")),
        ),
        &[2.0],
    );

    // The attributes of the conventions.
    let (key, unit, _, _) = find(names::CLIENT_OPERATION_DURATION, None);
    let labels: Vec<(String, String)> = key
        .key()
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect();
    for expected in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.response.model", "gpt-x"),
    ] {
        assert!(
            labels
                .iter()
                .any(|(k, v)| k == expected.0 && v == expected.1),
            "{expected:?} missing in {labels:?}"
        );
    }
    assert!(
        !labels.iter().any(|(k, _)| k == "error.type"),
        "a completed stream has no error.type"
    );
    assert_eq!(*unit, Some(Unit::Seconds));
    assert_eq!(find(names::CLIENT_TOKEN_USAGE, None).1, Some(Unit::Count));

    // The open-streams gauge went up and back down; the outcome counter counted one.
    match &find(names::STREAMS_OPEN, None).3 {
        DebugValue::Gauge(v) => assert_eq!(v.into_inner(), 0.0),
        other => panic!("{other:?}"),
    }
    match &find(names::STREAMS_ENDED, Some(("outcome", "completed"))).3 {
        DebugValue::Counter(n) => assert_eq!(*n, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_streams_carry_error_type_and_no_server_ttft() {
    let snapshot = support::metrics::recorded(true, || async {
        let layer = SseLayer::new()
            .idle_timeout(Duration::from_secs(1))
            .observer((
                UsageObserver::new(),
                TimingObserver::new(),
                MetricsObserver::new(),
            ));
        let (tx, upstream) = channel();
        let request = Request::post("/v1/chat/completions")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = serve_with(layer, request, response("text/event-stream", upstream))
            .await
            .into_body();
        tx.send(Ok(Frame::data(Bytes::from(chunk(
            r#"{"content":"Hi"}"#,
            "null",
        )))))
        .unwrap();
        collect(body).await; // the upstream stalls: idle timeout after 1 s
        drop(tx);
    });
    let duration = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == names::CLIENT_OPERATION_DURATION)
        .expect("duration recorded");
    assert!(
        duration
            .0
            .key()
            .labels()
            .any(|l| l.key() == "error.type" && l.value() == "idle_timeout"),
        "error.type missing"
    );
    assert!(
        !snapshot
            .iter()
            .any(|(key, ..)| key.key().name() == names::SERVER_TIME_TO_FIRST_TOKEN),
        "server TTFT is for successful responses only"
    );
    assert!(
        snapshot
            .iter()
            .any(|(key, ..)| key.key().name() == names::STREAMS_ENDED
                && key.key().labels().any(|l| l.value() == "idle_timeout"))
    );
}

/// An Anthropic stream that ends with an `error` event before `message_delta`: its output
/// is an estimate (not recorded: the conventions want counted tokens), its input the
/// provider's own (recorded); `message_start`'s placeholder output is neither.
#[test]
fn estimated_output_is_not_recorded_but_reported_input_is() {
    let snapshot = support::metrics::recorded(true, || async {
        let layer = SseLayer::new().observer((UsageObserver::new(), MetricsObserver::new()));
        let request = Request::post("/v1/messages")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Partial answer\"}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let body = serve_with(
            layer,
            request,
            response("text/event-stream", support::body::sse(&[stream])),
        )
        .await
        .into_body();
        collect(body).await;
    });
    let tokens = |kind: &str| {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == names::CLIENT_TOKEN_USAGE
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "gen_ai.token.type" && l.value() == kind)
            })
            .flat_map(|(.., value)| match value {
                DebugValue::Histogram(values) => {
                    values.iter().map(|v| v.into_inner()).collect::<Vec<f64>>()
                }
                other => panic!("{other:?}"),
            })
            .collect::<Vec<f64>>()
    };
    assert_eq!(tokens("input"), [30.0]);
    assert_eq!(tokens("output"), [0.0; 0], "an estimate is not a count");
}

/// A `StreamLimitLayer` rejection (`503`) is counted, with its reason, through the facade
/// and by the layer's own handle.
#[test]
fn limit_rejections_are_counted_with_their_reason() {
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};
    use tower_sse::StreamLimitLayer;

    let limit = StreamLimitLayer::new(1);
    let open = limit.counter();
    let snapshot = support::metrics::recorded(false, || async {
        let service = limit.layer(tower::service_fn(|_: Request<()>| async {
            let (_, upstream) = channel();
            Ok::<_, Infallible>(response("text/event-stream", upstream))
        }));
        let held = service.clone().oneshot(Request::new(())).await.unwrap();
        assert!(held.body().holds_permit());
        for _ in 0..2 {
            let rejected = service.clone().oneshot(Request::new(())).await.unwrap();
            assert_eq!(rejected.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        }
        drop(held);
        let admitted = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(admitted.status(), http::StatusCode::OK);
    });
    assert_eq!(open.rejected(), 2);
    let rejections: Vec<_> = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == names::LIMIT_REJECTIONS)
        .collect();
    assert_eq!(rejections.len(), 1, "one series: {rejections:?}");
    let (key, _, _, value) = rejections[0];
    let labels: Vec<(&str, &str)> = key.key().labels().map(|l| (l.key(), l.value())).collect();
    assert_eq!(labels, [("reason", "limit_full")]);
    assert_eq!(*value, DebugValue::Counter(2));
}

/// Records what `describe()` describes: kind, name and unit.
#[derive(Default)]
struct Descriptions(std::sync::Mutex<Vec<(&'static str, String, Option<Unit>)>>);

impl Descriptions {
    fn push(&self, kind: &'static str, name: metrics::KeyName, unit: Option<Unit>) {
        self.0
            .lock()
            .unwrap()
            .push((kind, name.as_str().to_string(), unit));
    }
}

impl metrics::Recorder for Descriptions {
    fn describe_counter(
        &self,
        name: metrics::KeyName,
        unit: Option<Unit>,
        _: metrics::SharedString,
    ) {
        self.push("counter", name, unit);
    }
    fn describe_gauge(&self, name: metrics::KeyName, unit: Option<Unit>, _: metrics::SharedString) {
        self.push("gauge", name, unit);
    }
    fn describe_histogram(
        &self,
        name: metrics::KeyName,
        unit: Option<Unit>,
        _: metrics::SharedString,
    ) {
        self.push("histogram", name, unit);
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The one table of the `metrics` module docs, `metrics::names` and `describe()` agree: every
/// name is in all three, with the same kind, and seconds where the table says `s`.
#[test]
fn every_metric_is_named_described_and_in_the_table() {
    use std::collections::BTreeMap;

    let source = include_str!("../src/metrics/mod.rs");

    // The constants of `pub mod names { … }`, however rustfmt wraps them.
    let start = source.find("pub mod names {").expect("the names module");
    let module = &source[start..];
    let module = &module[..module.find("\n}\n").expect("its end")];
    let mut constants: Vec<&str> = module
        .split(';')
        .filter(|item| item.contains("pub const"))
        .map(|item| item.split('"').nth(1).expect("a string constant"))
        .collect();
    constants.sort_unstable();

    // The rows of the table: name -> (kind, unit).
    let table: BTreeMap<&str, (&str, &str)> = source
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let name = cells[0].trim_end_matches('`');
            (name, (cells[1], cells[2]))
        })
        .collect();

    let recorder = Descriptions::default();
    metrics::with_local_recorder(&recorder, describe);
    let described: BTreeMap<String, (&str, Option<Unit>)> = recorder
        .0
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|(kind, name, unit)| (name, (kind, unit)))
        .collect();

    assert!(!constants.is_empty() && !table.is_empty(), "nothing parsed");
    assert_eq!(
        table.keys().copied().collect::<Vec<_>>(),
        constants,
        "the table's names vs metrics::names"
    );
    assert_eq!(
        described.keys().map(String::as_str).collect::<Vec<_>>(),
        constants,
        "describe() vs metrics::names"
    );
    for (name, (kind, unit)) in &table {
        let (described_kind, described_unit) = described[*name];
        assert_eq!(*kind, described_kind, "{name}: kind");
        let seconds = *unit == "s";
        assert_eq!(
            described_unit,
            Some(if seconds { Unit::Seconds } else { Unit::Count }),
            "{name}: unit"
        );
    }
}

/// Model names come from clients and upstreams: a flood of distinct (or huge) names is
/// recorded under a bounded set of label values.
#[test]
fn model_labels_are_bounded_in_number_and_length() {
    use std::collections::HashSet;
    use tower_sse::metrics::{ModelLabels, OTHER};

    let snapshot = support::metrics::recorded(false, || async {
        let layer = SseLayer::new()
            .observer(MetricsObserver::new().model_labels(ModelLabels::first_seen(10).max_len(64)));
        for i in 0..60 {
            // Half short distinct names, half 1 KB ones.
            let model = if i % 2 == 0 {
                format!("model-{i}")
            } else {
                format!("{i}-{}", "x".repeat(1024))
            };
            let body = format!(
                "data: {{\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"hi\"}}}}]}}\n\n"
            );
            serve_model_stream(&layer, &model, body).await;
        }
    });
    for label in ["gen_ai.request.model", "gen_ai.response.model"] {
        let values: HashSet<String> = snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == names::CLIENT_OPERATION_DURATION)
            .flat_map(|(key, ..)| {
                key.key()
                    .labels()
                    .filter(|l| l.key() == label)
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            values.len(),
            11,
            "{label}: ten names and _OTHER: {values:?}"
        );
        assert!(values.contains(OTHER));
        assert!(values.iter().all(|v| v.len() <= 64), "{label}");
    }
}

/// The observer keeps the recorder's handles per label set (up to a bound): what it records
/// is what looking every metric up for every stream records, within the bound and beyond it.
#[test]
fn kept_handles_record_what_lookups_per_stream_record() {
    let streams = |observer: MetricsObserver| async move {
        let layer =
            SseLayer::new().observer((UsageObserver::new(), TimingObserver::new(), observer));
        for i in 0..12 {
            let model = format!("model-{}", i % 4);
            let event = |content: &str| {
                format!(
                    "data: {{\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n"
                )
            };
            let mut stream = event("a") + &event("b");
            if i % 3 == 0 {
                // Cut mid-event: a failed stream, with `error.type`.
                stream.push_str("data: {\"object\"");
            } else {
                stream.push_str("data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\ndata: [DONE]\n\n");
            }
            serve_model_stream(&layer, &model, stream).await;
        }
    };
    let sorted = |mut snapshot: support::metrics::Snapshot| {
        snapshot.sort_by_key(|(key, ..)| format!("{key:?}"));
        snapshot
            .into_iter()
            .map(|(key, _, _, value)| format!("{key:?} = {value:?}"))
            .collect::<Vec<_>>()
    };
    let looked_up = sorted(support::metrics::recorded(true, || {
        streams(MetricsObserver::new().max_label_sets(0))
    }));
    let kept = sorted(support::metrics::recorded(true, || {
        streams(MetricsObserver::new())
    }));
    let partly_kept = sorted(support::metrics::recorded(true, || {
        streams(MetricsObserver::new().max_label_sets(2))
    }));
    assert!(looked_up.iter().any(|line| line.contains("error.type")));
    assert!(
        looked_up
            .iter()
            .any(|line| line.contains(names::CLIENT_TOKEN_USAGE))
    );
    assert_eq!(kept, looked_up);
    assert_eq!(partly_kept, looked_up);
}

/// Serve one chat stream, `body` whole, through `layer`, for a request naming `model`.
async fn serve_model_stream<O, E>(layer: &SseLayer<O, E>, model: &str, body: String)
where
    O: tower_sse::Observer + Clone + Send + 'static,
    E: tower_sse::OnEnd + Clone + Send + 'static,
{
    let mut request = Request::post("/v1/chat/completions")
        .body(Empty::<Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(tower_sse::request::RequestModel(model.to_owned()));
    let upstream = http_body_util::Full::new(Bytes::from(body));
    let res = serve_with(
        layer.clone(),
        request,
        response("text/event-stream", upstream),
    )
    .await;
    collect(res.into_body()).await;
}

/// The gaps of one stream between content events, in milliseconds: a short stream, one that
/// fills the observer's buffer of gaps twice and more, and one cut mid-event (a failed
/// stream records its gaps too). They spread over the advised buckets, a boundary included.
const GAP_STREAMS: [(&[u64], bool); 3] = [
    (&[20], true),
    (
        &[
            3, 10, 17, 40, 41, 80, 79, 160, 5, 320, 640, 1, 2, 1280, 7, 9, 11, 2560, 13, 15,
        ],
        true,
    ),
    (&[30, 5, 5, 5, 60, 5, 5, 5, 90], false),
];

/// Serve the [`GAP_STREAMS`] one after the other through `layer`, on paused time: content
/// events that many milliseconds apart.
async fn gap_streams<O, E>(layer: SseLayer<O, E>)
where
    O: tower_sse::Observer + Clone + Send + 'static,
    E: tower_sse::OnEnd + Clone + Send + 'static,
{
    for (gaps, completed) in GAP_STREAMS {
        let (tx, upstream) = channel();
        let request = Request::post("/v1/chat/completions")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = serve_with(
            layer.clone(),
            request,
            response("text/event-stream", upstream),
        )
        .await
        .into_body();
        let driver = tokio::spawn(async move {
            let send = |s: String| tx.send(Ok(Frame::data(Bytes::from(s)))).unwrap();
            send(chunk(r#"{"content":"a"}"#, "null"));
            for gap in gaps {
                sleep(Duration::from_millis(*gap)).await;
                send(chunk(r#"{"content":"b"}"#, "null"));
            }
            if completed {
                send(chunk("{}", "\"stop\""));
                send("data: [DONE]\n\n".into());
            } else {
                send("data: {\"object\"".into());
            }
        });
        collect(body).await;
        driver.await.unwrap();
    }
}

/// The per-chunk gaps a stream keeps and records at its end (or when its buffer is full)
/// reach the recorder as recording each at its event did: the same values in the same order
/// (a debugging recorder), and so the same bucket counts, count and sum in a Prometheus
/// exporter with the advised buckets, compared with the gaps recorded one by one under the
/// same key.
#[test]
fn per_chunk_gaps_batched_per_stream_are_what_the_exporter_sees_per_event() {
    use metrics::Recorder;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

    let layer = || {
        SseLayer::new().observer((
            UsageObserver::new(),
            TimingObserver::new(),
            MetricsObserver::new(),
        ))
    };
    let expected: Vec<f64> = GAP_STREAMS
        .iter()
        .flat_map(|(gaps, _)| gaps.iter())
        .map(|ms| Duration::from_millis(*ms).as_secs_f64())
        .collect();

    // The values, in order, and the key they were recorded under.
    let snapshot = support::metrics::recorded(true, || gap_streams(layer()));
    let mut per_chunk = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == names::CLIENT_TIME_PER_OUTPUT_CHUNK);
    let (key, _, _, value) = per_chunk.next().expect("the per-chunk histogram");
    assert!(per_chunk.next().is_none(), "one label set");
    let DebugValue::Histogram(values) = value else {
        panic!("a histogram: {value:?}");
    };
    let values: Vec<f64> = values.iter().map(|v| v.into_inner()).collect();
    assert_eq!(values, expected);

    let prometheus = || {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::CLIENT_TIME_PER_OUTPUT_CHUNK.into()),
                tower_sse::metrics::buckets::OPERATION_DURATION,
            )
            .unwrap()
            .build_recorder()
    };
    let rendered = |recorder: &PrometheusRecorder| {
        let name = names::CLIENT_TIME_PER_OUTPUT_CHUNK.replace('.', "_");
        let text = recorder.handle().render();
        text.lines()
            .filter(|line| line.starts_with(&name))
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    // Through the layer, on paused time: the same run as above.
    let batched = prometheus();
    metrics::with_local_recorder(&batched, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(gap_streams(layer()));
    });
    // One record per gap, straight into a histogram of the same key.
    let one_by_one = prometheus();
    let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
    let histogram = one_by_one.register_histogram(key.key(), &metadata);
    for value in &expected {
        histogram.record(*value);
    }
    let (batched, one_by_one) = (rendered(&batched), rendered(&one_by_one));
    assert!(
        batched
            .iter()
            .any(|line| line.contains("_count") && line.ends_with(&format!(" {}", expected.len()))),
        "{batched:#?}"
    );
    assert!(batched.iter().any(|line| line.contains("le=\"0.04\"")));
    assert_eq!(batched, one_by_one);
}
