//! Handlespace synchronization with a peer (RFC 5353 Handle Table Request
//! and Response): asking a peer for its home PEs, page by page, and
//! deleting what its last page no longer lists (`TableSync`); answering a
//! peer's request page by page (`TableCursor`).

use std::collections::HashSet;
use std::time::Instant;

use policies::PeId;
use protocol::rserpool::PoolHandle;
use protocol::rserpool::enrp::{Body, PoolEntry};

use super::{Enrp, Outgoing};
use crate::server::Server;

/// Our Handle Table Request to a peer in progress.
#[derive(Debug)]
pub(super) struct TableSync {
    pub(super) started: Instant,
    seen: HashSet<(PoolHandle, PeId)>,
}

/// A Handle Table we are sending a peer page by page.
#[derive(Debug)]
pub(super) struct TableCursor {
    pub(super) started: Instant,
    remaining: std::vec::IntoIter<(PoolHandle, PeId)>,
}

impl Enrp {
    pub(super) fn request_table(&mut self, now: Instant, peer: u32, out: &mut Vec<Outgoing>) {
        self.peer_mut(peer).sync = Some(TableSync {
            started: now,
            seen: HashSet::new(),
        });
        self.send(
            peer,
            Body::HandleTableRequest {
                own_children_only: true,
            },
            out,
        );
    }

    pub(super) fn answer_table_request(
        &mut self,
        now: Instant,
        peer: u32,
        own_children_only: bool,
        server: &Server,
        out: &mut Vec<Outgoing>,
    ) {
        let own_id = self.config.server_id;
        let per_page = self.config.max_elements_per_table_response.max(1);
        let cursor = self
            .peer_mut(peer)
            .cursor
            .get_or_insert_with(|| TableCursor {
                started: now,
                remaining: if own_children_only {
                    server.handlespace().elements_of_home(own_id)
                } else {
                    server.handlespace().all_elements()
                }
                .into_iter(),
            });
        cursor.started = now;
        let mut pool_entries: Vec<PoolEntry> = Vec::new();
        let mut taken = 0;
        while taken < per_page {
            let Some((handle, id)) = cursor.remaining.next() else {
                break;
            };
            // PEs removed since the table was listed are simply skipped.
            let Some(element) = server.pool_element(&handle, id) else {
                continue;
            };
            taken += 1;
            // Closed pools: the PE's proof goes along, so the peer can
            // check it with its own authority keys.
            let membership = server.membership_of(&handle, id);
            match pool_entries.last_mut() {
                Some(entry) if entry.pool_handle == handle => {
                    entry.pool_elements.push(element);
                    if membership.is_some() {
                        entry
                            .memberships
                            .resize(entry.pool_elements.len() - 1, None);
                        entry.memberships.push(membership);
                    }
                }
                _ => pool_entries.push(PoolEntry {
                    pool_handle: handle,
                    pool_elements: vec![element],
                    memberships: membership.map(|m| vec![Some(m)]).unwrap_or_default(),
                }),
            }
        }
        let more_to_send = cursor.remaining.len() > 0;
        if !more_to_send {
            self.peer_mut(peer).cursor = None;
        }
        self.send(
            peer,
            Body::HandleTableResponse {
                reject: false,
                more_to_send,
                pool_entries,
            },
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_table_response(
        &mut self,
        now: Instant,
        peer: u32,
        reject: bool,
        more_to_send: bool,
        pool_entries: Vec<PoolEntry>,
        server: &mut Server,
        out: &mut Vec<Outgoing>,
    ) {
        if reject {
            tracing::warn!(
                peer = format_args!("{peer:#010x}"),
                "Handle Table Request rejected"
            );
            self.peer_mut(peer).sync = None;
            return;
        }
        let mut refused = 0;
        let mut seen = Vec::new();
        for mut entry in pool_entries {
            let memberships = std::mem::take(&mut entry.memberships);
            for (index, mut element) in entry.pool_elements.into_iter().enumerate() {
                let membership = memberships.get(index).cloned().flatten();
                if element.home_enrp_server_identifier == 0 {
                    element.home_enrp_server_identifier = peer;
                }
                seen.push((entry.pool_handle.clone(), element.pe_identifier));
                if server
                    .apply_peer_element(now, &entry.pool_handle, element, membership, false)
                    .is_err()
                {
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            tracing::warn!(
                peer = format_args!("{peer:#010x}"),
                refused,
                "PEs of a Handle Table Response refused"
            );
            self.count_malformed("handle_table_entry_refused");
        }
        let Some(sync) = self.peer_mut(peer).sync.as_mut() else {
            // Unsolicited (or late) response: the PEs are applied, nothing
            // is deleted without a complete table.
            return;
        };
        sync.seen.extend(seen);
        sync.started = now;
        if more_to_send {
            self.send(
                peer,
                Body::HandleTableRequest {
                    own_children_only: true,
                },
                out,
            );
            return;
        }
        let seen = self
            .peer_mut(peer)
            .sync
            .take()
            .map(|s| s.seen)
            .unwrap_or_default();
        let mut removed = 0;
        for (handle, id) in server.handlespace().elements_of_home(peer) {
            if !seen.contains(&(handle.clone(), id))
                && server.remove_peer_element(&handle, id, peer)
            {
                removed += 1;
            }
        }
        tracing::info!(
            peer = format_args!("{peer:#010x}"),
            elements = seen.len(),
            removed,
            "handle table synchronized"
        );
    }
}
