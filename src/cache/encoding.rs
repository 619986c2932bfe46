//! Compressed forms of an entry's answer body: made once per entry and coding, on first use,
//! and kept beside the entry (the memory tier then weighs them), never on every hit.

use std::io::Write;

use bytes::Bytes;

/// The content codings the service answers in, besides `identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Brotli (RFC 7932): the smaller of the two on JSON.
    Br,
    /// gzip (RFC 1952): what every client takes.
    Gzip,
}

impl Coding {
    /// Every coding, in order of preference when a client weighs them equally.
    pub const ALL: [Coding; 2] = [Coding::Br, Coding::Gzip];

    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// `body`, compressed. Levels: brotli 5 and gzip 6, where both give most of their size
    /// reduction on JSON at a fraction of the top levels' time (made once per entry, but on the
    /// request that first asks).
    pub fn compress(self, body: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(body.len() / 3 + 64);
        match self {
            Coding::Br => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 5,
                    lgwin: 22,
                    ..Default::default()
                };
                let mut input = body;
                brotli::BrotliCompress(&mut input, &mut out, &params)
                    .expect("compressing into memory cannot fail");
            }
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
                encoder
                    .write_all(body)
                    .expect("compressing into memory cannot fail");
                out = encoder.finish().expect("compressing into memory cannot fail");
            }
        }
        Bytes::from(out)
    }

    /// The coding to answer in for an `Accept-Encoding` value: the acceptable one (q > 0, named
    /// or through `*`) with the highest weight, brotli on a tie; `None` for identity (no header,
    /// only `identity`, unknown codings, or everything refused with `q=0`).
    pub fn negotiate(accept_encoding: Option<&[u8]>) -> Option<Coding> {
        let accept = std::str::from_utf8(accept_encoding?).ok()?;
        let mut named = [None::<f32>; Coding::ALL.len()];
        let mut any = None::<f32>;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match token.as_str() {
                "*" => any = Some(q),
                t => {
                    if let Some(i) = Coding::ALL.iter().position(|c| c.as_str() == t) {
                        named[i].get_or_insert(q);
                    }
                }
            }
        }
        let mut best: Option<(Coding, f32)> = None;
        for (i, coding) in Coding::ALL.iter().enumerate() {
            let q = named[i].or(any).unwrap_or(0.0);
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((*coding, q));
            }
        }
        best.map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(header: &str) -> Option<Coding> {
        Coding::negotiate(Some(header.as_bytes()))
    }

    #[test]
    fn negotiation_follows_weights_and_refusals() {
        assert_eq!(Coding::negotiate(None), None);
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0.5, gzip;q=0.8"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0"), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("compress, deflate"), None);
        assert_eq!(pick("*"), Some(Coding::Br));
        assert_eq!(pick("*;q=0.5, br;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("GZIP;Q=1"), Some(Coding::Gzip));
        assert_eq!(pick("zstd, gzip;q=0.1"), Some(Coding::Gzip));
    }

    #[test]
    fn both_codings_round_trip_and_shrink_json() {
        let body: Vec<u8> = (0..200)
            .flat_map(|i| {
                format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}},").into_bytes()
            })
            .collect();
        let gz = Coding::Gzip.compress(&body);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, body);
        let br = Coding::Br.compress(&body);
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut back).unwrap();
        assert_eq!(back, body);
        assert!(br.len() * 5 < body.len() && gz.len() * 5 < body.len());
    }
}
