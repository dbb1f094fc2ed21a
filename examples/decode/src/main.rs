//! Decode a real-looking Anthropic Messages stream that arrives in awkward pieces.
//!
//! The stream uses CRLF line ends, carries `ping` events and a comment, and is cut every
//! 7 bytes, so events, lines, CRLF pairs and UTF-8 characters are all split across chunks.
//! The decoder still sees exactly the events a browser would, and their raw bytes put
//! together give back the input byte for byte.
//!
//! ```sh
//! cargo run -p example-decode
//! ```

use bytes::Bytes;
use tower_sse::sse::{Decoder, Item};

const STREAM: &str = concat!(
    "event: message_start\r\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",",
    "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",",
    "\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
    "event: ping\r\n",
    "data: {\"type\": \"ping\"}\r\n\r\n",
    ": upstream keeps the connection warm\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Grüße, \"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"wörld ✓\"}}\r\n\r\n",
    "event: content_block_stop\r\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
    "event: message_delta\r\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
    "event: message_stop\r\n",
    "data: {\"type\":\"message_stop\"}\r\n\r\n",
);

fn main() {
    let input = Bytes::from_static(STREAM.as_bytes());
    let mut decoder = Decoder::new();
    let mut forwarded = Vec::new();
    let (mut events, mut comments, mut chunks) = (0, 0, 0);

    println!("{:<22} {:>5}  data", "event", "bytes");
    for at in (0..input.len()).step_by(7) {
        decoder.push(input.slice(at..(at + 7).min(input.len())));
        chunks += 1;
        for item in decoder.by_ref() {
            match item.expect("no event here is larger than the limit") {
                Item::Event(event) => {
                    events += 1;
                    let data = event.data();
                    let shown: String = data.chars().take(48).collect();
                    println!("{:<22} {:>5}  {shown}…", event.event(), event.raw().len());
                    forwarded.extend_from_slice(event.raw());
                }
                Item::Comment(comment) => {
                    comments += 1;
                    println!("{:<22} {:>5}  {}", "(comment)", "", comment.text());
                }
                Item::Block(block) => forwarded.extend_from_slice(block.raw()),
                _ => {}
            }
        }
    }
    decoder.finish();
    assert!(decoder.next().is_none());

    println!();
    println!("{chunks} chunks of 7 bytes -> {events} events, {comments} comment");
    println!(
        "raw bytes forwarded: {} of {} ({})",
        forwarded.len(),
        input.len(),
        if forwarded == input {
            "identical"
        } else {
            "DIFFERENT"
        }
    );
    println!("truncated at end of input: {}", decoder.is_truncated());
}
