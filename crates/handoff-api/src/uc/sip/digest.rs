//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760):
//! answering a proxy's or registrar's 401/407 challenge to a SUBSCRIBE.

use super::message::split_list;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

/// One `Digest` challenge (`WWW-Authenticate` or `Proxy-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth`: the answer then counts its uses of the nonce.
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    /// Parses one challenge header value; `None` for other schemes, algorithms handoff does
    /// not know, or a challenge without realm or nonce.
    pub fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim();
        let (scheme, params) = value.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop_auth = false;
        let mut stale = false;
        for param in split_list(params) {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "opaque" => opaque = Some(value),
                "stale" => stale = value.eq_ignore_ascii_case("true"),
                "qop" => qop_auth = value.split(',').any(|q| q.trim() == "auth"),
                "algorithm" => {
                    algorithm = match value.to_ascii_uppercase().as_str() {
                        "MD5" => Algorithm::Md5,
                        "MD5-SESS" => Algorithm::Md5Sess,
                        "SHA-256" => Algorithm::Sha256,
                        "SHA-256-SESS" => Algorithm::Sha256Sess,
                        _ => return None,
                    }
                }
                _ => {}
            }
        }
        Some(Challenge {
            realm: realm?,
            nonce: nonce?,
            opaque,
            algorithm,
            qop_auth,
            stale,
        })
    }

    /// The best of several challenges: SHA-256 before MD5 (RFC 8760 §2.4).
    pub fn best<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
        // One challenge per header line, as proxies send them.
        let mut challenges: Vec<Challenge> = values.filter_map(Challenge::parse).collect();
        challenges.sort_by_key(|c| match c.algorithm {
            Algorithm::Sha256 | Algorithm::Sha256Sess => 0,
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
        });
        challenges.into_iter().next()
    }

    /// The `Authorization`/`Proxy-Authorization` value for a request; `nc` counts the uses of
    /// this nonce, from 1.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let hash = |text: &str| -> String {
            match self.algorithm {
                Algorithm::Md5 | Algorithm::Md5Sess => {
                    use md5::Digest as _;
                    hex::encode(md5::Md5::digest(text.as_bytes()))
                }
                Algorithm::Sha256 | Algorithm::Sha256Sess => {
                    use sha2::Digest as _;
                    hex::encode(sha2::Sha256::digest(text.as_bytes()))
                }
            }
        };
        let mut ha1 = hash(&format!("{username}:{}:{password}", self.realm));
        if matches!(self.algorithm, Algorithm::Md5Sess | Algorithm::Sha256Sess) {
            ha1 = hash(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = hash(&format!("{method}:{uri}"));
        let nc = format!("{nc:08x}");
        let response = if self.qop_auth {
            hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            hash(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let algorithm = match self.algorithm {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        };
        let mut value = format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm={algorithm}",
            self.realm, self.nonce
        );
        if self.qop_auth {
            value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{opaque}\""));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_rfc_2617_example() {
        // RFC 2617 §3.5 (HTTP's example; the computation is the same for SIP).
        let challenge = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(challenge.qop_auth);
        let answer = challenge.answer(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert!(
            answer.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{answer}"
        );
        assert!(answer.contains("nc=00000001"));
        assert!(answer.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    }

    #[test]
    fn answers_the_rfc_7616_sha256_example() {
        // RFC 7616 §3.9.1.
        let challenge = Challenge::parse(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        let answer = challenge.answer(
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert!(
            answer.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{answer}"
        );
    }

    #[test]
    fn prefers_sha256_and_refuses_other_schemes() {
        let best = Challenge::best(
            [
                r#"Digest realm="r", nonce="n1", algorithm=MD5"#,
                r#"Digest realm="r", nonce="n2", algorithm=SHA-256"#,
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(best.algorithm, Algorithm::Sha256);
        assert!(Challenge::parse(r#"Basic realm="r""#).is_none());
        assert!(Challenge::parse(r#"Digest realm="r""#).is_none());
        assert!(
            Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#).is_none()
        );
    }
}
