//! Reading every TLS file a config names, before anything starts: what
//! `chorus check` reports once the config itself is valid, and what `chorus
//! run` refuses to start with. Each problem names the key whose file is at
//! fault, e.g. `server.tls.key: the private key in ... does not match ...`.

use std::path::Path;

use crate::config::{Config, Problem, TlsFiles};

use super::{PairFile, TlsError, load_pair, roots};

/// Every problem with the TLS files of `config` (unreadable, not PEM, a key
/// that does not match its certificate, a CA file with no usable
/// certificate), as [`Problem`]s whose file is `file`, the config file.
/// Empty when all is well.
pub fn check(config: &Config, file: &str) -> Vec<Problem> {
    check_files(&config.tls_files(), file)
}

/// The same for the files a config names, valid or not otherwise
/// ([`crate::config::ConfigError::tls_files`]).
pub fn check_files(files: &TlsFiles, file: &str) -> Vec<Problem> {
    let mut report = Report {
        file,
        problems: Vec::new(),
    };
    if let Some((cert, key)) = &files.server {
        report.pair("server.tls.cert", "server.tls.key", cert, key);
    }
    for route in &files.routes {
        let i = route.index;
        if let Some(ca) = &route.ca
            && let Err(error) = roots(Some(ca))
        {
            report.push(format!("routes[{i}].upstream_ca_file"), &error);
        }
        if let Some((cert, key)) = &route.client {
            report.pair(
                &format!("routes[{i}].upstream_client_cert"),
                &format!("routes[{i}].upstream_client_key"),
                cert,
                key,
            );
        }
    }
    report.problems
}

struct Report<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Report<'_> {
    fn push(&mut self, key: String, error: &TlsError) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            key,
            message: error.to_string().replace(['\n', '\r'], " "),
        });
    }

    /// A certificate and its key: each file's problems, then whether they match.
    fn pair(&mut self, cert_key: &str, key_key: &str, cert: &Path, key: &Path) {
        if let Err(errors) = load_pair(cert, key) {
            for (file, error) in errors.iter() {
                let name = match file {
                    PairFile::Cert => cert_key,
                    PairFile::Key => key_key,
                };
                self.push(name.to_owned(), error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, KeyPair};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, text: &str) -> String {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        }

        /// A self-signed certificate and its key, as PEM files.
        fn pair(&self, name: &str) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (
                self.write(&format!("{name}.crt"), &cert.pem()),
                self.write(&format!("{name}.key"), &key.serialize_pem()),
            )
        }
    }

    fn config(server_tls: Option<(&str, &str)>, route_extra: &str) -> Config {
        let tls = server_tls.map_or(String::new(), |(cert, key)| {
            format!("[server.tls]\ncert = {cert:?}\nkey = {key:?}\n")
        });
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{tls}\n[[routes]]\nname = \"llm\"\n\
             upstream = \"https://127.0.0.1:1\"\n{route_extra}\n"
        );
        Config::parse(&text, "chorus.toml", |_| None).unwrap()
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn a_good_pair_has_no_problem() {
        let files = Files::new();
        let (cert, key) = files.pair("server");
        assert!(check(&config(Some((&cert, &key)), ""), "chorus.toml").is_empty());
    }

    #[test]
    fn a_mismatched_pair_blames_the_key() {
        let files = Files::new();
        let (cert, _) = files.pair("one");
        let (_, other_key) = files.pair("two");
        let problems = check(&config(Some((&cert, &other_key)), ""), "chorus.toml");
        assert_eq!(keys(&problems), ["server.tls.key"]);
        let line = problems[0].to_string();
        assert!(line.starts_with("chorus.toml: server.tls.key: "), "{line}");
        assert!(line.contains("does not match the certificate"), "{line}");
    }

    #[test]
    fn non_pem_files_are_named_each() {
        let files = Files::new();
        let cert = files.write("cert.pem", "not a certificate");
        let key = files.write("key.pem", "not a key");
        let problems = check(&config(Some((&cert, &key)), ""), "chorus.toml");
        assert_eq!(keys(&problems), ["server.tls.cert", "server.tls.key"]);
        assert!(problems[0].message.contains("no PEM certificate"));
        assert!(problems[1].message.contains("no PEM private key"));
    }

    #[test]
    fn swapped_cert_and_key_are_reported() {
        let files = Files::new();
        let (cert, key) = files.pair("server");
        let problems = check(&config(Some((&key, &cert)), ""), "chorus.toml");
        assert_eq!(keys(&problems), ["server.tls.cert", "server.tls.key"]);
    }

    #[test]
    fn upstream_client_pair_and_ca_are_checked() {
        let files = Files::new();
        let (cert, _) = files.pair("client");
        let (_, other_key) = files.pair("other");
        let ca = files.write(
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let extra = format!(
            "upstream_ca_file = {ca:?}\nupstream_client_cert = {cert:?}\nupstream_client_key = {other_key:?}\n"
        );
        let problems = check(&config(None, &extra), "chorus.toml");
        assert_eq!(
            keys(&problems),
            [
                "routes[0].upstream_ca_file",
                "routes[0].upstream_client_key"
            ]
        );
    }
}
