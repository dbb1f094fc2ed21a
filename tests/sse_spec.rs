//! The decoder against the HTML standard's "Interpreting an event stream", one rule per test.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::sse::{Ev, bytewise, decode, decode_with, split_at};
use tower_sse::sse::{DecodeError, Decoder, Item};

fn ev(data: &str) -> Ev {
    Ev {
        event: "message".into(),
        data: data.into(),
        id: String::new(),
        retry: None,
    }
}

fn datas(input: &[u8]) -> Vec<String> {
    decode(input).events.into_iter().map(|e| e.data).collect()
}

fn first_event(input: &'static [u8]) -> tower_sse::sse::Event {
    let mut decoder = Decoder::new();
    decoder.push(Bytes::from_static(input));
    decoder.finish();
    decoder
        .find_map(|item| match item {
            Ok(Item::Event(e)) => Some(e),
            _ => None,
        })
        .expect("an event")
}

// ---- line ends ----

#[test]
fn lf_ends_lines() {
    assert_eq!(decode(b"data: a\n\n").events, vec![ev("a")]);
}

#[test]
fn crlf_ends_lines() {
    assert_eq!(decode(b"data: a\r\n\r\n").events, vec![ev("a")]);
}

#[test]
fn cr_alone_ends_lines() {
    assert_eq!(decode(b"data: a\r\r").events, vec![ev("a")]);
}

#[test]
fn mixed_line_ends_in_one_stream() {
    assert_eq!(
        datas(b"data: a\r\ndata: b\rdata: c\n\rdata: d\n\n"),
        vec!["a\nb\nc", "d"]
    );
}

#[test]
fn cr_at_end_of_chunk_ends_the_line_at_once() {
    let mut decoder = Decoder::new();
    decoder.push(Bytes::from_static(b"data: a\r"));
    assert!(decoder.next().is_none());
    decoder.push(Bytes::from_static(b"\r"));
    // The event is dispatched on the CR, without waiting for a possible LF.
    assert!(matches!(decoder.next(), Some(Ok(Item::Event(_)))));
}

#[test]
fn lf_after_a_cr_that_ended_the_previous_chunk_is_not_a_second_line_end() {
    // "data: a\r" | "\ndata: b\n\n": the LF completes the CRLF; no blank line in between.
    let chunks = [
        Bytes::from_static(b"data: a\r"),
        Bytes::from_static(b"\ndata: b\n\n"),
    ];
    assert_eq!(
        decode_with(Decoder::new(), &chunks).events,
        vec![ev("a\nb")]
    );
}

#[test]
fn cr_cr_is_a_line_end_then_a_blank_line() {
    assert_eq!(datas(b"data: a\r\rdata: b\r\r"), vec!["a", "b"]);
}

#[test]
fn lf_cr_is_a_line_end_then_a_blank_line() {
    assert_eq!(datas(b"data: a\n\rdata: b\n\r"), vec!["a", "b"]);
}

// ---- byte order mark ----

#[test]
fn leading_bom_is_stripped() {
    assert_eq!(decode(b"\xEF\xBB\xBFdata: a\n\n").events, vec![ev("a")]);
}

#[test]
fn leading_bom_split_across_chunks_is_stripped() {
    let input = b"\xEF\xBB\xBFdata: a\n\n";
    assert_eq!(
        decode_with(Decoder::new(), &bytewise(input)).events,
        vec![ev("a")]
    );
    assert_eq!(
        decode_with(Decoder::new(), &split_at(input, &[2])).events,
        vec![ev("a")]
    );
}

#[test]
fn bom_alone_in_the_first_chunk_is_stripped() {
    let chunks = [
        Bytes::from_static(b"\xEF\xBB\xBF"),
        Bytes::from_static(b"data: a\n\n"),
    ];
    assert_eq!(decode_with(Decoder::new(), &chunks).events, vec![ev("a")]);
}

#[test]
fn only_one_leading_bom_is_stripped() {
    // The second BOM is part of the field name, which makes the field unknown.
    assert!(
        decode(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n")
            .events
            .is_empty()
    );
}

#[test]
fn bom_after_stream_start_is_not_stripped() {
    assert_eq!(
        datas(b"data: a\n\ndata: \xEF\xBB\xBFb\n\n"),
        vec!["a".to_string(), "\u{FEFF}b".to_string()]
    );
}

#[test]
fn partial_bom_prefix_is_data() {
    assert_eq!(decode(b"\xEF\xBBdata: a\n\n").events, vec![]);
    let out = decode_with(Decoder::new(), &bytewise(b"\xEFdata: a\n\n"));
    assert!(out.events.is_empty(), "\\xEF starts the field name");
}

// ---- comments ----

#[test]
fn comment_lines_are_reported() {
    assert_eq!(decode(b": ping\n\n").comments, vec!["ping"]);
}

#[test]
fn comment_text_loses_one_leading_space_only() {
    assert_eq!(decode(b":  two\n:none\n\n").comments, vec![" two", "none"]);
}

#[test]
fn comment_only_block_dispatches_nothing() {
    assert!(decode(b": hello\n\n").events.is_empty());
}

#[test]
fn comment_inside_an_event_does_not_break_it() {
    let out = decode(b"data: a\n: ping\ndata: b\n\n");
    assert_eq!(out.events, vec![ev("a\nb")]);
    assert_eq!(out.comments, vec!["ping"]);
}

// ---- fields ----

#[test]
fn field_without_colon_has_an_empty_value() {
    // "data" alone appends an empty line to the data buffer: the event has empty data.
    assert_eq!(datas(b"data\n\n"), vec![""]);
}

#[test]
fn one_space_after_the_colon_is_stripped() {
    assert_eq!(datas(b"data: a\n\n"), vec!["a"]);
}

#[test]
fn only_one_space_after_the_colon_is_stripped() {
    assert_eq!(datas(b"data:  a\n\n"), vec![" a"]);
}

#[test]
fn no_space_after_the_colon_is_fine() {
    assert_eq!(datas(b"data:a\n\n"), vec!["a"]);
}

#[test]
fn tab_after_the_colon_is_kept() {
    assert_eq!(datas(b"data:\ta\n\n"), vec!["\ta"]);
}

#[test]
fn colon_inside_the_value_is_kept() {
    assert_eq!(datas(b"data: a: b\n\n"), vec!["a: b"]);
}

#[test]
fn field_names_are_case_sensitive() {
    assert!(decode(b"Data: a\n\n").events.is_empty());
}

#[test]
fn unknown_fields_are_ignored() {
    assert_eq!(datas(b"foo: bar\ndata: a\nbaz\n\n"), vec!["a"]);
}

#[test]
fn space_before_the_colon_is_part_of_the_name() {
    assert!(decode(b"data : a\n\n").events.is_empty());
}

// ---- data ----

#[test]
fn data_lines_are_joined_with_lf() {
    assert_eq!(datas(b"data: a\ndata: b\ndata: c\n\n"), vec!["a\nb\nc"]);
}

#[test]
fn final_lf_of_the_data_buffer_is_removed() {
    // Two data lines, the second empty: the buffer is "a\n\n", dispatched as "a\n".
    assert_eq!(datas(b"data: a\ndata:\n\n"), vec!["a\n"]);
}

#[test]
fn empty_data_field_dispatches_an_event_with_empty_data() {
    assert_eq!(datas(b"data:\n\n"), vec![""]);
}

#[test]
fn spec_example_empty_and_newline_data() {
    // From the standard: "data\n\ndata\ndata\n\ndata:" fires "" and "\n"; the last block
    // is discarded because no blank line follows it.
    let out = decode(b"data\n\ndata\ndata\n\ndata:");
    assert_eq!(
        out.events
            .iter()
            .map(|e| e.data.as_str())
            .collect::<Vec<_>>(),
        vec!["", "\n"]
    );
}

#[test]
fn spec_example_space_after_colon_is_optional() {
    assert_eq!(datas(b"data:test\n\ndata: test\n\n"), vec!["test", "test"]);
}

#[test]
fn block_without_data_dispatches_nothing() {
    let out = decode(b"event: x\nid: 1\n\n");
    assert!(out.events.is_empty());
}

// ---- event type ----

#[test]
fn event_type_defaults_to_message() {
    assert_eq!(first_event(b"data: a\n\n").event(), "message");
}

#[test]
fn event_field_sets_the_type() {
    let e = first_event(b"event: delta\ndata: a\n\n");
    assert_eq!(e.event(), "delta");
    assert_eq!(&e.event_bytes()[..], b"delta");
}

#[test]
fn event_type_applies_to_its_own_block_only() {
    let out = decode(b"event: a\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(out.events[0].event, "a");
    assert_eq!(out.events[1].event, "message");
}

#[test]
fn empty_block_still_resets_the_event_type() {
    let out = decode(b"event: a\n\ndata: 2\n\n");
    assert_eq!(out.events, vec![ev("2")]);
}

#[test]
fn empty_event_value_means_message() {
    assert_eq!(first_event(b"event:\ndata: a\n\n").event(), "message");
}

// ---- id ----

#[test]
fn id_sets_the_last_event_id() {
    assert_eq!(first_event(b"id: 7\ndata: a\n\n").last_event_id(), "7");
}

#[test]
fn id_persists_across_events() {
    let out = decode(b"id: 7\ndata: a\n\ndata: b\n\n");
    assert_eq!(out.events[1].id, "7");
    assert_eq!(out.last_event_id, b"7");
}

#[test]
fn empty_id_resets_the_last_event_id() {
    let out = decode(b"id: 7\ndata: a\n\nid\ndata: b\n\n");
    assert_eq!(out.events[1].id, "");
    assert_eq!(out.last_event_id, b"");
}

#[test]
fn id_containing_nul_is_ignored() {
    let out = decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n");
    assert_eq!(out.events[1].id, "1");
}

#[test]
fn id_only_block_updates_the_last_event_id_without_dispatching() {
    let mut decoder = Decoder::new();
    decoder.push(Bytes::from_static(b"id: 9\n\n"));
    match decoder.next() {
        Some(Ok(Item::Block(block))) => {
            assert!(block.sets_id());
            assert!(block.changes_state());
        }
        other => panic!("expected a block, got {other:?}"),
    }
    assert_eq!(&decoder.last_event_id()[..], b"9");
}

#[test]
fn id_of_an_unterminated_final_block_is_not_applied() {
    let out = decode(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
    assert_eq!(out.last_event_id, b"1");
}

#[test]
fn spec_example_ids() {
    let out = decode(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
    let got: Vec<_> = out
        .events
        .iter()
        .map(|e| (e.data.as_str(), e.id.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("first event", "1"),
            ("second event", ""),
            (" third event", "")
        ]
    );
}

// ---- retry ----

#[test]
fn retry_with_ascii_digits_sets_the_reconnection_time() {
    let e = first_event(b"retry: 3000\ndata: a\n\n");
    assert_eq!(e.retry(), Some(Duration::from_millis(3000)));
}

#[test]
fn retry_with_anything_but_digits_is_ignored() {
    for input in [
        &b"retry: 1a\ndata: a\n\n"[..],
        b"retry: -1\ndata: a\n\n",
        b"retry: +5\ndata: a\n\n",
        b"retry: 1.5\ndata: a\n\n",
        b"retry:  5\ndata: a\n\n",
        b"retry: 5 \ndata: a\n\n",
    ] {
        assert_eq!(
            decode(input).events[0].retry,
            None,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn empty_retry_is_ignored() {
    assert_eq!(decode(b"retry:\ndata: a\n\n").events[0].retry, None);
}

#[test]
fn retry_too_large_for_u64_is_ignored() {
    assert_eq!(
        decode(b"retry: 99999999999999999999999\ndata: a\n\n").events[0].retry,
        None
    );
}

#[test]
fn retry_only_block_is_reported_as_a_state_change() {
    let mut decoder = Decoder::new();
    decoder.push(Bytes::from_static(b"retry: 10\n\n"));
    match decoder.next() {
        Some(Ok(Item::Block(block))) => {
            assert_eq!(block.retry(), Some(Duration::from_millis(10)));
            assert!(!block.sets_id());
        }
        other => panic!("expected a block, got {other:?}"),
    }
    assert_eq!(decoder.reconnection_time(), Some(10));
}

// ---- end of input ----

#[test]
fn unterminated_final_event_is_discarded() {
    let out = decode(b"data: a\n\ndata: b\n");
    assert_eq!(out.events, vec![ev("a")]);
    assert!(out.truncated);
}

#[test]
fn unterminated_final_line_is_discarded() {
    let out = decode(b"data: a\n\ndata: b");
    assert_eq!(out.events, vec![ev("a")]);
    assert!(out.truncated);
}

#[test]
fn lenient_mode_dispatches_the_unterminated_final_event() {
    for input in [
        &b"data: a\n\ndata: b"[..],
        b"data: a\n\ndata: b\n",
        b"data: a\n\ndata: b\r",
    ] {
        let out = decode_with(
            Decoder::new().lenient_eof(true),
            &[Bytes::copy_from_slice(input)],
        );
        assert_eq!(out.events, vec![ev("a"), ev("b")]);
        assert!(!out.truncated);
    }
}

#[test]
fn lenient_mode_completes_the_raw_bytes_of_the_flushed_event() {
    let out = decode_with(
        Decoder::new().lenient_eof(true),
        &[Bytes::from_static(b"data: b")],
    );
    assert_eq!(out.raw, b"data: b\n\n");
    // Decoding the completed bytes strictly gives the same event.
    assert_eq!(decode(&out.raw).events, vec![ev("b")]);
}

#[test]
fn unterminated_comment_is_not_a_truncation() {
    let out = decode(b"data: a\n\n: bye");
    assert!(!out.truncated);
    assert!(
        out.comments.is_empty(),
        "the standard never processes an unterminated line"
    );
}

#[test]
fn unterminated_block_without_data_is_not_a_truncation() {
    // No event was lost: a block of `retry` (or `id`) alone dispatches nothing.
    assert!(!decode(b"data: a\n\nretry: 1000\n").truncated);
    assert!(!decode(b"data: a\n\nid: 1").truncated);
    assert!(!decode(b"data: a\n\nid: 1\ndat").truncated);
    assert!(decode(b"data: a\n\nid: 1\ndata").truncated);
}

#[test]
fn stream_ending_on_a_blank_line_is_not_truncated() {
    assert!(!decode(b"data: a\n\n").truncated);
}

// ---- text ----

#[test]
fn invalid_utf8_is_replaced_not_rejected() {
    let e = first_event(b"data: a\xFFb\n\n");
    assert_eq!(e.data(), "a\u{FFFD}b");
}

#[test]
fn invalid_utf8_stays_available_as_bytes() {
    let e = first_event(b"data: a\xFFb\n\n");
    assert_eq!(&e.data_bytes()[..], b"a\xFFb");
}

#[test]
fn utf8_character_split_across_chunks_decodes() {
    let input = "data: héllo €\n\n".as_bytes();
    let out = decode_with(Decoder::new(), &bytewise(input));
    assert_eq!(out.events, vec![ev("héllo €")]);
}

// ---- framing and raw bytes ----

#[test]
fn several_events_in_one_chunk() {
    assert_eq!(
        datas(b"data: 1\n\ndata: 2\n\ndata: 3\n\n"),
        vec!["1", "2", "3"]
    );
}

#[test]
fn event_split_at_every_byte() {
    let input = b"event: x\r\nid: 5\r\ndata: a\r\ndata: b\r\n\r\n";
    assert_eq!(decode_with(Decoder::new(), &bytewise(input)), decode(input));
}

#[test]
fn leading_blank_lines_are_empty_blocks() {
    let out = decode(b"\n\ndata: a\n\n");
    assert_eq!(out.events, vec![ev("a")]);
    assert_eq!(out.raw, b"\n\ndata: a\n\n");
}

#[test]
fn raw_bytes_are_the_block_as_received() {
    let input = b": hi\nevent: x\r\ndata: a\r\n\r\ndata: b\n\n";
    let out = decode(input);
    assert_eq!(out.raw, input);
}

#[test]
fn single_line_data_and_raw_are_slices_of_the_input() {
    let input = Bytes::from_static(b"data: hello\n\n");
    let mut decoder = Decoder::new();
    decoder.push(input.clone());
    let Some(Ok(Item::Event(e))) = decoder.next() else {
        panic!()
    };
    let range = input.as_ptr_range();
    assert!(range.contains(&e.data_bytes().as_ptr()));
    assert_eq!(e.raw().as_ptr(), input.as_ptr());
}

// ---- limits ----

#[test]
fn event_larger_than_the_limit_is_an_error_and_decoding_resumes() {
    let input = b"data: 0123456789\n\ndata: a\n\n";
    let out = decode_with(
        Decoder::new().max_event_size(8),
        &[Bytes::from_static(input)],
    );
    assert_eq!(out.errors, 1);
    assert_eq!(out.events, vec![ev("a")]);
}

#[test]
fn endless_line_is_refused_while_still_partial() {
    let mut decoder = Decoder::new().max_event_size(16);
    decoder.push(Bytes::from(vec![b'a'; 10]));
    assert!(decoder.next().is_none());
    decoder.push(Bytes::from(vec![b'a'; 10]));
    assert_eq!(
        decoder.next(),
        Some(Err(DecodeError::EventTooLarge { limit: 16 }))
    );
    assert_eq!(decoder.buffered(), 0, "the oversized bytes are released");
    decoder.push(Bytes::from(vec![b'a'; 1000]));
    assert!(decoder.next().is_none());
    assert_eq!(decoder.buffered(), 0, "skipped bytes are not held");
    decoder.push(Bytes::from_static(b"\n\ndata: ok\n\n"));
    let Some(Ok(Item::Event(e))) = decoder.next() else {
        panic!()
    };
    assert_eq!(e.data(), "ok");
}

#[test]
fn event_of_exactly_the_limit_is_accepted() {
    // "data: abcd" is 10 bytes, plus one for its line end.
    let input = b"data: abcd\n\n";
    assert_eq!(
        decode_with(Decoder::new().max_event_size(11), &bytewise(input)).events,
        vec![ev("abcd")]
    );
    assert_eq!(
        decode_with(Decoder::new().max_event_size(10), &bytewise(input)).errors,
        1
    );
}
