//! Just enough RESP (Redis serialization protocol) to read replies and pub/sub pushes.

/// One RESP value, borrowing from the read buffer.
#[derive(Debug, PartialEq)]
pub enum Resp<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
    Array(Vec<Resp<'a>>),
}

/// Why the bytes are not RESP.
#[derive(Debug, PartialEq)]
pub struct Malformed;

const MAX_DEPTH: usize = 4;
const MAX_ITEMS: i64 = 1 << 20;
const MAX_BULK: i64 = 64 << 20;

/// Parses one value from the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// value and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Resp<'_>, usize)>, Malformed> {
    parse_at(buf, 0, 0)
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
    Some(from + rel)
}

fn int(b: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Resp<'_>, usize)>, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(end) = line_end(buf, at + 1) else {
        if buf.len() - at > 64 * 1024 {
            return Err(Malformed); // a header line this long is not RESP
        }
        return Ok(None);
    };
    let head = &buf[at + 1..end];
    let next = end + 2;
    match kind {
        b'+' => Ok(Some((Resp::Simple(head), next))),
        b'-' => Ok(Some((Resp::Error(head), next))),
        b':' => Ok(Some((Resp::Int(int(head)?), next))),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), next)));
            }
            if n > MAX_BULK {
                return Err(Malformed);
            }
            let n = n as usize;
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err(Malformed);
            }
            Ok(Some((Resp::Bulk(Some(&buf[next..next + n])), next + n + 2)))
        }
        b'*' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Resp::Array(Vec::new()), next)));
            }
            if n > MAX_ITEMS {
                return Err(Malformed);
            }
            let mut items = Vec::with_capacity((n as usize).min(16));
            let mut pos = next;
            for _ in 0..n {
                match parse_at(buf, pos, depth + 1)? {
                    None => return Ok(None),
                    Some((v, p)) => {
                        items.push(v);
                        pos = p;
                    }
                }
            }
            Ok(Some((Resp::Array(items), pos)))
        }
        _ => Err(Malformed),
    }
}

/// Appends a command as a RESP array of bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushes_and_partials() {
        let m = b"*3\r\n$7\r\nmessage\r\n$5\r\nflood\r\n$3\r\nabc\r\n:12\r\n";
        let (v, n) = parse(m).unwrap().unwrap();
        assert_eq!(
            v,
            Resp::Array(vec![
                Resp::Bulk(Some(b"message")),
                Resp::Bulk(Some(b"flood")),
                Resp::Bulk(Some(b"abc"))
            ])
        );
        assert_eq!(parse(&m[n..]).unwrap().unwrap().0, Resp::Int(12));
        for cut in 0..n {
            assert_eq!(parse(&m[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(b"?x\r\n"), Err(Malformed));
        assert_eq!(parse(b":x\r\n"), Err(Malformed));
        assert_eq!(parse(b"$2\r\nabcd\r\n"), Err(Malformed));
    }
}
