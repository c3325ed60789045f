//! A minimal authoritative DNS server on 127.0.0.1 (UDP) for the domain
//! verification tests: answers TXT queries from a table the test fills,
//! NXDOMAIN for everything else. Messages are parsed and built with
//! hickory-proto, so only the table is hand-written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::TXT;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

#[derive(Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl DnsServer {
    pub async fn start() -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let records: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let table = records.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                answer.metadata.authoritative = true;
                let mut found = false;
                for q in &query.queries {
                    answer.add_query(q.clone());
                    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                    if q.query_type() != RecordType::TXT {
                        continue;
                    }
                    let values = table
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&name)
                        .cloned()
                        .unwrap_or_default();
                    for v in values {
                        found = true;
                        answer.add_answer(Record::from_rdata(q.name().clone(), 60, RData::TXT(TXT::new(vec![v]))));
                    }
                }
                if !found {
                    answer.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self { addr, records }
    }

    /// Publishes a TXT record `value` at `name`.
    pub fn publish(&self, name: &str, value: &str) {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(value.to_string());
    }
}
