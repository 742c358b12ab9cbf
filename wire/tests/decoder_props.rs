//! Property tests of the decoder: a byte stream cut anywhere decodes to the
//! same messages, garbage never panics, and encode/decode round-trips. The
//! failure guarded against is a framing bug that only shows when the kernel
//! splits a read at an unlucky offset (a ring wrap, a short socket read).

use proptest::prelude::*;
use wire::{Decoder, FrameError, Header, Message, PAYLOAD_MAX, encode};

fn arb_message() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
        |(msg_type, req_id, tx_id, payload)| Message {
            header: Header { msg_type, req_id, tx_id, len: payload.len() as u32 },
            payload,
        },
    )
}

fn encode_all(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode(m.header.msg_type, m.header.req_id, m.header.tx_id, &m.payload, &mut out);
    }
    out
}

/// Feeds `bytes` in pieces cut at `cuts` (positions taken modulo the length)
/// and collects every message, stopping at the first error.
fn decode_split(bytes: &[u8], cuts: &[usize]) -> (Vec<Message>, Option<FrameError>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() }).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for w in points.windows(2) {
        d.push(&bytes[w[0]..w[1]]);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

proptest! {
    #[test]
    fn round_trip_any_split(msgs in prop::collection::vec(arb_message(), 0..8),
                            cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        let bytes = encode_all(&msgs);
        let (got, err) = decode_split(&bytes, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn byte_by_byte_equals_whole(msgs in prop::collection::vec(arb_message(), 0..4)) {
        let bytes = encode_all(&msgs);
        let all_cuts: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(decode_split(&bytes, &all_cuts), decode_split(&bytes, &[]));
    }

    #[test]
    fn garbage_never_panics_and_split_does_not_matter(bytes in prop::collection::vec(any::<u8>(), 0..2000),
                                                      cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let whole = decode_split(&bytes, &[]);
        let split = decode_split(&bytes, &cuts);
        prop_assert_eq!(&whole, &split);
        let (msgs, err) = whole;
        for m in &msgs {
            prop_assert!(m.payload.len() <= PAYLOAD_MAX);
            prop_assert_eq!(m.header.len as usize, m.payload.len());
        }
        if let Some(FrameError::PayloadTooLong { len }) = err {
            prop_assert!(len as usize > PAYLOAD_MAX);
        }
    }

    #[test]
    fn bytes_needed_is_exact(msg in arb_message()) {
        let bytes = encode_all(std::slice::from_ref(&msg));
        let mut d = Decoder::new();
        let mut fed = 0;
        loop {
            let need = d.bytes_needed();
            if need == 0 { break; }
            prop_assert!(fed + need <= bytes.len());
            // one byte less than needed never completes the message
            if need > 1 {
                d.push(&bytes[fed..fed + need - 1]);
                prop_assert_eq!(d.next_message(), Ok(None));
                d.push(&bytes[fed + need - 1..fed + need]);
            } else {
                d.push(&bytes[fed..fed + need]);
            }
            fed += need;
        }
        prop_assert_eq!(fed, bytes.len());
        prop_assert_eq!(d.next_message(), Ok(Some(msg)));
    }

    #[test]
    fn oversize_len_is_refused(len in (PAYLOAD_MAX as u32 + 1)..=u32::MAX, t in any::<u32>()) {
        let h = Header { msg_type: t, req_id: 1, tx_id: 0, len };
        let mut d = Decoder::new();
        d.push(&h.to_bytes());
        prop_assert_eq!(d.next_message(), Err(FrameError::PayloadTooLong { len }));
    }
}
