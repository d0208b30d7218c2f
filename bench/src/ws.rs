//! A lean WebSocket client (RFC 6455) for subscribers: the upgrade request, the server's
//! frames (unmasked, possibly fragmented) read out of a buffer, and the client's masked
//! frames (pongs, and the commands of a protocol that subscribes by message, such as
//! Centrifugo's). No extension is offered, so no frame is compressed.

use anyhow::bail;

use crate::target::Target;

/// Opcodes of the frames a subscriber deals with.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Longest message accepted from a server.
const MAX_MESSAGE: usize = 16 << 20;

/// The `GET` that asks for the upgrade, with the extra `headers` (`name: value`).
pub fn upgrade_request(target: &Target, headers: &[String]) -> String {
    // The key only has to be 16 bytes in base64; the server's answer to it is not checked.
    let mut req = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        target.path, target.authority
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Appends a client frame (FIN set, masked as a client must) to `out`.
pub fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = fastrand::u32(..).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Reassembles a server's messages from the bytes read.
#[derive(Debug, Default)]
pub struct Reader {
    /// The opcode and the payload so far of a fragmented message.
    partial: Option<(u8, Vec<u8>)>,
}

impl Reader {
    /// Calls `each(opcode, payload)` for every complete message and control frame at the
    /// start of `buf`, then drops the bytes used. A partial frame stays for the next read.
    pub fn messages(&mut self, buf: &mut Vec<u8>, mut each: impl FnMut(u8, &[u8])) -> anyhow::Result<()> {
        let mut at = 0;
        while let Some((fin, opcode, range)) = frame_at(&mut buf[at..])? {
            let payload_start = at + range.start;
            let payload_end = at + range.end;
            let payload = &mut buf[payload_start..payload_end];
            at = payload_end;
            if opcode >= CLOSE {
                each(opcode, payload);
                continue;
            }
            match (&mut self.partial, opcode) {
                (None, CONTINUATION) => bail!("a continuation frame without a message"),
                (None, op) if fin => each(op, payload),
                (None, op) => self.partial = Some((op, payload.to_vec())),
                (Some(_), op) if op != CONTINUATION => bail!("a new message inside a fragmented one"),
                (Some((_, so_far)), _) => {
                    if so_far.len() + payload.len() > MAX_MESSAGE {
                        bail!("a message over {MAX_MESSAGE} bytes");
                    }
                    so_far.extend_from_slice(payload);
                    if fin && let Some((op, whole)) = self.partial.take() {
                        each(op, &whole);
                    }
                }
            }
        }
        if at > 0 {
            buf.drain(..at);
        }
        Ok(())
    }
}

/// The frame at the start of `buf`: FIN, opcode and where its payload lies (unmasked in
/// place if the server masked it); `None` until all of it has arrived.
fn frame_at(buf: &mut [u8]) -> anyhow::Result<Option<(bool, u8, std::ops::Range<usize>)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (fin, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x0F);
    if buf[0] & 0x70 != 0 {
        bail!("a frame with reserved bits set (no extension was negotiated)");
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        bail!("a frame of {len} bytes");
    }
    let mask_at = head;
    if masked {
        head += 4;
    }
    let end = head + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    if masked {
        let mask = [buf[mask_at], buf[mask_at + 1], buf[mask_at + 2], buf[mask_at + 3]];
        for (i, b) in buf[head..end].iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((fin, opcode, head..end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n @ 126..=0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn read_in_pieces(wire: &[u8], piece: usize) -> Vec<(u8, Vec<u8>)> {
        let (mut r, mut buf, mut got) = (Reader::default(), Vec::new(), Vec::new());
        for part in wire.chunks(piece) {
            buf.extend_from_slice(part);
            r.messages(&mut buf, |op, p| got.push((op, p.to_vec()))).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(buf.is_empty());
        got
    }

    #[test]
    fn messages_split_across_reads_and_fragments_come_out_whole() {
        let long = vec![b'x'; 70_000];
        let mut wire = server_frame(true, TEXT, b"{\"seq\":1}");
        wire.extend(server_frame(false, TEXT, b"{\"se"));
        wire.extend(server_frame(true, PING, b"p"));
        wire.extend(server_frame(true, CONTINUATION, b"q\":2}"));
        wire.extend(server_frame(true, BINARY, &long[..300]));
        wire.extend(server_frame(true, TEXT, &long));
        for piece in [1, 3, 100, 100_000] {
            let got = read_in_pieces(&wire, piece);
            let want: Vec<(u8, Vec<u8>)> = vec![
                (TEXT, b"{\"seq\":1}".to_vec()),
                (PING, b"p".to_vec()),
                (TEXT, b"{\"seq\":2}".to_vec()),
                (BINARY, long[..300].to_vec()),
                (TEXT, long.clone()),
            ];
            assert_eq!(got, want, "piece {piece}");
        }
    }

    #[test]
    fn a_client_frame_is_masked_and_reads_back_the_same() {
        for len in [0, 2, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            client_frame(TEXT, &payload, &mut wire);
            assert_eq!(wire[1] & 0x80, 0x80, "masked");
            assert_eq!(read_in_pieces(&wire, 7), vec![(TEXT, payload)]);
        }
    }

    #[test]
    fn broken_framing_is_an_error() {
        let mut buf = server_frame(true, CONTINUATION, b"x");
        assert!(Reader::default().messages(&mut buf, |_, _| {}).is_err());
        let mut buf = vec![0xC1, 0x01, b'x'];
        assert!(Reader::default().messages(&mut buf, |_, _| {}).is_err(), "compressed frame");
    }
}
