//! The faults operators fear, each under continuous Run Demo load with every request counted:
//! a SPIRE server replica killed (`server-failover`), the X.509 authority rotated and the old one
//! revoked (`ca-rotation`), an agent killed under its workloads (`agent-restart`), the datastore
//! gone for longer than a rotation (`datastore-down`). Each names its evidence: serials, which
//! replica's authority signed, authority IDs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use contract::{Holder, Workload};
use openssl::x509::X509;
use serde::Deserialize;

use super::Report;
use super::cases::{holder_serials, restore_ttl, shorten_ttl, step};
use crate::demo::{Load, Tally};
use crate::lab::{Component, Lab};
use crate::probe;

/// A replica's X.509 authorities, as `localauthority x509 show -output json` prints them.
#[derive(Debug, Default, Deserialize)]
struct Authorities {
    active: Option<Authority>,
    prepared: Option<Authority>,
    old: Option<Authority>,
}

#[derive(Clone, Debug, Deserialize)]
struct Authority {
    authority_id: String,
}

fn authorities(lab: &dyn Lab, replica: u8) -> anyhow::Result<Authorities> {
    let json = lab.spire_server(
        Some(replica),
        &["localauthority", "x509", "show"],
        &["-output", "json"],
    )?;
    serde_json::from_str(json.trim())
        .with_context(|| format!("`localauthority x509 show` printed {json}"))
}

fn active(lab: &dyn Lab, replica: u8) -> anyhow::Result<String> {
    Ok(authorities(lab, replica)?
        .active
        .with_context(|| format!("replica {replica} has no active X.509 authority"))?
        .authority_id)
}

/// The authority that signed a certificate: its Authority Key Identifier, as SPIRE writes
/// authority IDs (lower-case hex of the CA's Subject Key Identifier).
fn signer(cert: &X509) -> Option<String> {
    cert.authority_key_id()
        .map(|k| k.as_slice().iter().map(|b| format!("{b:02x}")).collect())
}

/// A CA certificate's Subject Key Identifier, as an authority ID.
fn authority_id(ca: &X509) -> Option<String> {
    ca.subject_key_id()
        .map(|k| k.as_slice().iter().map(|b| format!("{b:02x}")).collect())
}

/// Who signed what each visible holder presents now (the frontend Envoy only acts as a client:
/// its chain is not visible from outside).
fn signers(lab: &dyn Lab) -> BTreeMap<&'static str, String> {
    lab.presented_chains()
        .into_iter()
        .filter_map(|(holder, chain)| {
            let chain = chain.ok()?;
            Some((holder, signer(chain.first()?)?))
        })
        .collect()
}

/// The load the fault scenarios run under: two clients, 100 ms apart.
fn load(lab: &dyn Lab) -> (Load, Instant) {
    (
        Load::start(
            &lab.frontend_url(),
            crate::demo::Ledger::Record,
            2,
            Duration::from_millis(100),
        ),
        Instant::now(),
    )
}

/// Stops the load and reports it: requests, failures, the longest gap between successes.
fn tally(r: &mut Report, load: Load, since: Instant) -> Tally {
    let tally = load.finish();
    let gap = tally.longest_gap(since, Instant::now());
    r.say(format!(
        "{} requests in {:.0} s, {} failed; longest gap between successful requests {} ms",
        tally.requests(),
        since.elapsed().as_secs_f64(),
        tally.failed,
        gap.as_millis()
    ));
    r.figure("requests", tally.requests());
    r.figure("failures", tally.failed);
    r.figure("longest_gap_ms", gap.as_millis() as u64);
    for f in tally.failures.iter().take(5) {
        r.say(format!("failure: {f}"));
    }
    tally
}

/// Samples every holder's serial every 500 ms for `window` — or until each of `enough` showed a
/// new one — calling `each` after each sample; the new serials each holder showed.
fn watch(
    lab: &dyn Lab,
    window: Duration,
    enough: &[Holder],
    mut each: impl FnMut(&dyn Lab) -> anyhow::Result<()>,
) -> anyhow::Result<BTreeMap<Holder, BTreeSet<String>>> {
    let first: BTreeMap<Holder, String> = holder_serials(lab)
        .into_iter()
        .map(|(h, (s, _))| (h, s))
        .collect();
    let mut seen: BTreeMap<Holder, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < window {
        for (h, (serial, _)) in holder_serials(lab) {
            if first.get(&h) != Some(&serial) && seen.entry(h).or_default().insert(serial.clone()) {
                println!(
                    "      {:>5.1} s  {h}: new serial {serial}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        each(lab)?;
        if !enough.is_empty() && enough.iter().all(|h| seen.contains_key(h)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(seen)
}

/// Records the rotations each holder showed as figures; fails when one showed none.
fn every_holder_rotated(
    r: &mut Report,
    seen: &BTreeMap<Holder, BTreeSet<String>>,
    when: &str,
) -> anyhow::Result<()> {
    for h in Holder::ALL {
        let n = seen.get(&h).map_or(0, BTreeSet::len);
        r.figure(
            &format!("rotations_{}_{}", when, h.to_string().replace(' ', "_")),
            n,
        );
    }
    let missing: Vec<String> = Holder::ALL
        .iter()
        .filter(|h| seen.get(h).is_none_or(BTreeSet::is_empty))
        .map(|h| h.to_string())
        .collect();
    ensure!(
        missing.is_empty(),
        "no new SVID {when} for: {}",
        missing.join(", ")
    );
    Ok(())
}

pub fn server_failover(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    shorten_ttl(lab, r, ttl)?;
    let (load, since) = load(lab);
    let outcome = (|| -> anyhow::Result<()> {
        let replicas: Vec<u8> = (0..crate::lab::SERVER_REPLICAS).collect();
        let ids: BTreeMap<u8, String> = replicas
            .iter()
            .map(|&i| Ok((i, active(lab, i)?)))
            .collect::<anyhow::Result<_>>()?;
        for (i, id) in &ids {
            r.say(format!("replica {i} signs with authority {id}"));
        }
        // Each replica in turn: the second round kills the other, so the one that came back in
        // the first round must carry the lab alone.
        for &down in &replicas {
            let survivor = replicas.iter().find(|&&i| i != down).copied().unwrap_or(0);
            step(&format!(
                "kill replica {down} hard; replica {survivor} must carry the lab"
            ));
            let c = Component::SpireServer(down);
            lab.kill(c)?;
            let mut wrong = Vec::new();
            let window = Duration::from_secs(u64::from(ttl) + 5);
            let seen = watch(lab, window, &Holder::ALL, |lab| {
                // While the replica is gone, only the survivor can have signed a new SVID.
                if lab.instance(c).is_none() {
                    for (holder, s) in signers(lab) {
                        if s != ids[&survivor] && s != ids[&down] {
                            wrong.push(format!("{holder} signed by {s}"));
                        }
                    }
                }
                Ok(())
            })?;
            every_holder_rotated(r, &seen, &format!("without_replica_{down}"))?;
            let now = signers(lab);
            for (holder, s) in &now {
                let by = ids.iter().find(|(_, id)| *id == s).map(|(i, _)| *i);
                r.say(format!(
                    "{holder}: signed by replica {}",
                    by.map_or("?".into(), |i| i.to_string())
                ));
            }
            if lab.instance(c).is_none() {
                ensure!(
                    now.values().all(|s| *s == ids[&survivor]),
                    "with replica {down} down, a certificate was signed by another authority than replica {survivor}'s: {now:?}"
                );
            }
            ensure!(wrong.is_empty(), "unknown signers: {wrong:?}");
            step(&format!("bring replica {down} back"));
            lab.start(c)?;
            let id = active(lab, down)?;
            r.say(format!(
                "replica {down} serves again (its API answers; authority {id})"
            ));
        }
        Ok(())
    })();
    let tally = tally(r, load, since);
    restore_ttl(lab)?;
    outcome?;
    ensure!(
        tally.failed == 0,
        "{} requests failed during failover",
        tally.failed
    );
    Ok(())
}

pub fn agent_restart(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    shorten_ttl(lab, r, ttl)?;
    let (load, since) = load(lab);
    let agent = Component::Agent(Workload::Backend);
    let outcome = (|| -> anyhow::Result<()> {
        let kept = [Component::EnvoyBackend, Component::HelperBackend];
        let before: Vec<Option<String>> = kept.iter().map(|c| lab.instance(*c)).collect();
        // The SVIDs the workloads hold must outlive the agent's absence and their reconnect. On
        // kind that is ≈ 3 s down plus 10 s for the pod to come back and the helper to write
        // again, more than the half TTL left at a rotation's due time: kill right after one.
        // Every holder, not the backend's alone: on kind the scheduler may have put PostgreSQL,
        // or any other workload, on the backend's node, so that the same agent serves it (a
        // PostgreSQL certificate that expired while the agent was down failed Run Demos there).
        // All of them got their short SVIDs at once, so they rotate within a second or two.
        step("wait for every holder's next rotation, so that each SVID has a whole TTL ahead");
        let fresh = watch(
            lab,
            Duration::from_secs(u64::from(ttl) + 5),
            &Holder::ALL,
            |_| Ok(()),
        )?;
        ensure!(
            Holder::ALL.iter().all(|h| fresh.contains_key(h)),
            "not every holder rotated within {} s: {fresh:?}",
            ttl + 5
        );
        step("kill the backend node's SPIRE agent hard (its workloads keep their SVIDs)");
        lab.kill(agent)?;
        std::thread::sleep(Duration::from_secs(3));
        step("start it again");
        lab.start(agent)?;
        step(
            "the backend's Envoy (SDS) and spiffe-helper reconnect by themselves: the next rotation arrives",
        );
        let mut rotated = BTreeMap::new();
        let seen = watch(
            lab,
            Duration::from_secs(u64::from(ttl) + 10),
            &[Holder::BackendEnvoy, Holder::BackendFiles],
            |_| Ok(()),
        )?;
        for h in [Holder::BackendEnvoy, Holder::BackendFiles] {
            let n = seen.get(&h).map_or(0, BTreeSet::len);
            rotated.insert(h, n);
            r.say(format!("{h}: {n} new serial(s) after the restart"));
            r.figure(
                &format!(
                    "rotations_after_restart_{}",
                    h.to_string().replace(' ', "_")
                ),
                n,
            );
        }
        ensure!(
            rotated.values().all(|n| *n > 0),
            "not every holder on the backend's node got a new SVID after the agent restarted: {rotated:?}"
        );
        let after: Vec<Option<String>> = kept.iter().map(|c| lab.instance(*c)).collect();
        r.say(format!(
            "the backend's Envoy and helper were not restarted ({before:?} → {after:?})"
        ));
        ensure!(
            before == after && before.iter().all(Option::is_some),
            "a workload restarted with the agent"
        );
        Ok(())
    })();
    let tally = tally(r, load, since);
    if lab.instance(agent).is_none() {
        lab.start(agent)?;
    }
    restore_ttl(lab)?;
    outcome?;
    ensure!(
        tally.failed == 0,
        "{} requests failed while the agent restarted",
        tally.failed
    );
    Ok(())
}

/// An entry no workload matches, to show whether registration works.
const PROBE_ID: &str = "spiffe://example.org/ns/demo/sa/registration-probe";

fn register_probe(lab: &dyn Lab) -> anyhow::Result<String> {
    lab.spire_server(
        None,
        &["entry", "create"],
        &[
            "-spiffeID",
            PROBE_ID,
            "-parentID",
            "spiffe://example.org/node/registration-probe",
            "-selector",
            "unix:uid:4294967294",
            "-output",
            "json",
        ],
    )
    .and_then(|out| crate::spire::created_id(&out))
}

fn remove_probe(lab: &dyn Lab) -> anyhow::Result<()> {
    let out = lab.spire_server(
        None,
        &["entry", "show"],
        &["-spiffeID", PROBE_ID, "-output", "json"],
    )?;
    for id in crate::spire::entry_ids(&out)? {
        lab.spire_server(None, &["entry", "delete"], &["-entryID", &id])?;
    }
    Ok(())
}

pub fn datastore_down(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    remove_probe(lab)?;
    // SPIRE signs no SVID without its datastore, and agents back off while their server fails
    // them. Shortening the TTL hands every holder a fresh SVID; the outage then lasts until each
    // is past its rotation point (half its life), so each misses a rotation, and leaves what is
    // left of the SVIDs (half a TTL) for the agents' way back.
    let ttl = ttl * 6;
    shorten_ttl(lab, r, ttl)?;
    let (load, since) = load(lab);
    let db = Component::SpireDatastore;
    let outcome = (|| -> anyhow::Result<()> {
        let left: Vec<i64> = holder_serials(lab)
            .values()
            .filter_map(|(_, left)| *left)
            .collect();
        ensure!(
            left.len() == Holder::ALL.len(),
            "not every holder's certificate could be read: {left:?}"
        );
        // Seconds until a holder is 3 s past half its life.
        let past_half = |l: i64| (l - i64::from(ttl / 2) + 3).max(1) as u64;
        let outage = Duration::from_secs(left.iter().map(|&l| past_half(l)).max().unwrap_or(1));
        step(&format!(
            "stop the SPIRE servers' datastore for {} s: until every holder is past half its {ttl} s SVID's life, where its agent rotates it",
            outage.as_secs(),
        ));
        let servers: Vec<(Component, Option<String>)> =
            Component::servers().map(|c| (c, lab.instance(c))).collect();
        lab.stop(db)?;
        let started = Instant::now();
        let mut refusal = None;
        let seen = watch(lab, outage, &[], |lab| {
            if refusal.is_none() && started.elapsed() > Duration::from_secs(2) {
                refusal = Some(register_probe(lab));
            }
            Ok(())
        })?;
        for h in Holder::ALL {
            r.say(format!(
                "{h}: {} new serial(s) while the datastore was down",
                seen.get(&h).map_or(0, BTreeSet::len)
            ));
        }
        match refusal.context("no registration was tried")? {
            Ok(id) => bail!("an entry was registered with the datastore down ({id})"),
            Err(e) => {
                let e = format!("{e:#}");
                r.say(format!("a new registration failed: {}", first_line(&e)));
                ensure!(
                    ["datastore", "connect", "sql", "database", "dial"]
                        .iter()
                        .any(|w| e.to_lowercase().contains(w)),
                    "the refusal does not say the datastore is the cause: {e}"
                );
            }
        }
        step("start the datastore again");
        lab.start(db)?;
        let returned = Instant::now();
        let (id, took) = crate::procs::wait_for(Duration::from_secs(60), || register_probe(lab))
            .context("registration did not recover")?;
        r.say(format!(
            "registration works again {:.1} s after the datastore returned (entry {id})",
            took.as_secs_f64()
        ));
        remove_probe(lab)?;
        for (i, (c, before)) in servers.iter().enumerate() {
            let replica = i as u8;
            crate::procs::wait_for(Duration::from_secs(60), || {
                lab.spire_server(Some(replica), &["healthcheck"], &[])
            })
            .with_context(|| format!("replica {replica} is not healthy again"))?;
            let now = lab.instance(*c);
            ensure!(
                now == *before,
                "replica {replica} was restarted during the outage ({before:?} → {now:?}): the datastore's absence must not cost a server"
            );
            r.say(format!(
                "replica {replica} healthy {:.1} s after the datastore returned, never restarted",
                returned.elapsed().as_secs_f64()
            ));
        }
        let seen = watch(
            lab,
            Duration::from_secs(u64::from(ttl)),
            &Holder::ALL,
            |_| Ok(()),
        )?;
        every_holder_rotated(r, &seen, "after_the_datastore_returned")?;
        r.say("every holder rotated again after the datastore returned");
        Ok(())
    })();
    let tally = tally(r, load, since);
    if lab.instance(db).is_none() {
        lab.start(db)?;
    }
    restore_ttl(lab)?;
    outcome?;
    ensure!(
        tally.failed == 0,
        "{} requests failed with the datastore down",
        tally.failed
    );
    Ok(())
}

/// Each agent's SPIFFE ID and the serial of its own X.509-SVID.
fn agent_svids(lab: &dyn Lab) -> anyhow::Result<BTreeMap<String, String>> {
    crate::spire::agent_svids(&lab.spire_server(None, &["agent", "list"], &["-output", "json"])?)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Every replica's authority in one state, from the `localauthority` command's JSON.
fn each_replica(
    lab: &dyn Lab,
    pick: impl Fn(&Authorities) -> Option<Authority>,
    what: &str,
) -> anyhow::Result<BTreeMap<u8, String>> {
    (0..crate::lab::SERVER_REPLICAS)
        .map(|i| {
            let a = authorities(lab, i)?;
            Ok((
                i,
                pick(&a)
                    .with_context(|| format!("replica {i} has no {what} authority: {a:?}"))?
                    .authority_id,
            ))
        })
        .collect()
}

/// The bundle's CAs by authority ID, with their serials.
fn bundle_ids(lab: &dyn Lab) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(lab
        .trust_bundle()?
        .iter()
        .filter_map(|c| Some((authority_id(c)?, svid::serial_hex(c))))
        .collect())
}

/// Waits until `done` holds, printing why not at most every 5 s.
fn until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        match done() {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if started.elapsed() > limit => {
                return Err(e.context(format!("{what}: not after {} s", limit.as_secs())));
            }
            Err(e) => {
                if said.elapsed() > Duration::from_secs(5) {
                    println!("      … {what}: {}", first_line(&format!("{e:#}")));
                    said = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Every holder trusts (`present`) or no longer trusts the CAs of these serials.
fn holders_trust(lab: &dyn Lab, serials: &BTreeSet<String>, present: bool) -> anyhow::Result<()> {
    for (h, cas) in lab.trusted_cas() {
        let cas: BTreeSet<String> = cas?.into_iter().collect();
        let ok = if present {
            serials.is_subset(&cas)
        } else {
            serials.is_disjoint(&cas)
        };
        ensure!(
            ok,
            "{h} trusts {cas:?}, {} {serials:?}",
            if present {
                "not all of"
            } else {
                "still some of"
            }
        );
    }
    Ok(())
}

pub fn ca_rotation(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let (load, since) = load(lab);
    let outcome = (|| -> anyhow::Result<()> {
        let old = each_replica(lab, |a| a.active.clone(), "active")?;
        for (i, id) in &old {
            r.say(format!("replica {i}: active authority {id}"));
        }
        // A short certificate left by an earlier scenario is replaced by a default one on its
        // way: wait for it, so that from activation on only this scenario makes holders move.
        until(
            "every holder holds a certificate of the default TTL",
            Duration::from_secs(60),
            || {
                let short: Vec<Holder> = holder_serials(lab)
                    .into_iter()
                    .filter(|(_, (_, left))| left.is_none_or(|l| l < 600))
                    .map(|(h, _)| h)
                    .collect();
                ensure!(short.is_empty(), "{short:?} still hold short certificates");
                Ok(())
            },
        )?;
        // A certificate under an old authority, kept to be tried after its revocation.
        let stale = lab.mint_svid(
            &Workload::Frontend.spiffe_id(),
            None,
            Duration::from_secs(600),
        )?;
        let stale_signer = signer(&stale.identity.chain[0]).unwrap_or_default();
        r.say(format!(
            "minted now for the frontend's ID, under authority {stale_signer}: tried again after the revocation"
        ));

        step("prepare a new X.509 authority on every replica");
        for i in old.keys() {
            lab.spire_server(Some(*i), &["localauthority", "x509", "prepare"], &[])?;
        }
        let prepared = each_replica(lab, |a| a.prepared.clone(), "prepared")?;
        for (i, id) in &prepared {
            r.say(format!("replica {i}: prepared authority {id}"));
        }
        let mut ids = BTreeMap::new();
        let took = until(
            "the bundle holds every prepared authority",
            Duration::from_secs(60),
            || {
                ids = bundle_ids(lab)?;
                let missing: Vec<&String> = prepared
                    .values()
                    .filter(|id| !ids.contains_key(*id))
                    .collect();
                ensure!(missing.is_empty(), "the bundle lacks {missing:?}");
                Ok(())
            },
        )?;
        r.say(format!(
            "the bundle holds both prepared CAs after {:.1} s",
            took.as_secs_f64()
        ));
        let new_serials: BTreeSet<String> = prepared
            .values()
            .filter_map(|id| ids.get(id).cloned())
            .collect();
        let took = until(
            "every holder trusts the new CAs",
            Duration::from_secs(90),
            || holders_trust(lab, &new_serials, true),
        )?;
        r.say(format!(
            "every holder trusts the new CAs ({} in the bundle) after {:.1} s, before any certificate is signed by them",
            ids.len(),
            took.as_secs_f64()
        ));

        step("activate them");
        // What each holder holds before activation: a certificate it holds after the taint that
        // is not this one was signed after activation, by a new authority.
        let before_activation: BTreeMap<Holder, String> = holder_serials(lab)
            .into_iter()
            .map(|(h, (s, _))| (h, s))
            .collect();
        for (i, id) in &prepared {
            lab.spire_server(
                Some(*i),
                &["localauthority", "x509", "activate"],
                &["-authorityID", id],
            )?;
        }
        let now_old = each_replica(lab, |a| a.old.clone(), "old")?;
        ensure!(
            now_old == old,
            "after activation the old authorities are {now_old:?}, not {old:?}"
        );
        r.say("activated: the previous authorities are now each replica's old one");
        step("taint the old ones: every SVID under them is replaced now");
        let agents_before = agent_svids(lab)?;
        for (i, id) in &old {
            lab.spire_server(
                Some(*i),
                &["localauthority", "x509", "taint"],
                &["-authorityID", id],
            )?;
        }
        let fresh: BTreeSet<&String> = prepared.values().collect();
        let took = until(
            "every holder holds a certificate under a new authority",
            Duration::from_secs(120),
            || {
                let now = holder_serials(lab);
                for h in Holder::ALL {
                    let (serial, _) = now.get(&h).with_context(|| format!("{h} not seen"))?;
                    ensure!(
                        before_activation.get(&h) != Some(serial),
                        "{h} still holds {serial}"
                    );
                }
                for (holder, s) in signers(lab) {
                    ensure!(fresh.contains(&s), "{holder} is signed by {s}");
                }
                Ok(())
            },
        )?;
        r.say(format!(
            "every holder moved to a new certificate after {:.1} s; the visible chains are signed by the new authorities:",
            took.as_secs_f64()
        ));
        for (holder, s) in signers(lab) {
            r.say(format!("  {holder}: {s}"));
        }
        // An agent still holding an SVID under an old authority after the revocation could not
        // reach a server again (a join-token agent cannot attest twice): wait for each.
        let took = until(
            "every agent holds a new X.509-SVID of its own",
            Duration::from_secs(60),
            || {
                let now = agent_svids(lab)?;
                let stale: Vec<&String> = agents_before
                    .iter()
                    .filter(|(id, serial)| now.get(*id) == Some(*serial))
                    .map(|(id, _)| id)
                    .collect();
                ensure!(stale.is_empty(), "still on the old authority: {stale:?}");
                Ok(())
            },
        )?;
        r.say(format!(
            "every agent ({}) rotated its own SVID after {:.1} s",
            agents_before.len(),
            took.as_secs_f64()
        ));

        step("revoke the old authorities: out of the bundle");
        for (i, id) in &old {
            lab.spire_server(
                Some(*i),
                &["localauthority", "x509", "revoke"],
                &["-authorityID", id],
            )?;
        }
        let old_serials: BTreeSet<String> =
            old.values().filter_map(|id| ids.get(id).cloned()).collect();
        let took = until(
            "the old CAs are gone from the bundle and from every holder",
            Duration::from_secs(90),
            || {
                let now = bundle_ids(lab)?;
                let left: Vec<&String> = old.values().filter(|id| now.contains_key(*id)).collect();
                ensure!(left.is_empty(), "the bundle still holds {left:?}");
                holders_trust(lab, &old_serials, false)
            },
        )?;
        r.say(format!(
            "the old authorities are gone from the bundle and from every holder after {:.1} s",
            took.as_secs_f64()
        ));

        step("the certificate minted under the old authority is refused");
        let trust = lab.trust_bundle()?;
        let refused = super::security::reachable(|| {
            probe::https_get_as(
                &lab.backend_envoy_addr(),
                "/api/orders",
                Some(&stale.identity),
                &trust,
                &Workload::Backend.spiffe_id(),
            )
        })?;
        match refused.1 {
            probe::Answer::Refused(why) => {
                r.say(format!("backend Envoy refused it: {why}"));
                ensure!(
                    why.starts_with("TLS"),
                    "refused, but not at the handshake: {why}"
                );
            }
            probe::Answer::Served(what) => {
                bail!("a certificate under the revoked authority was served: {what}")
            }
        }
        Ok(())
    })();
    let tally = tally(r, load, since);
    outcome?;
    ensure!(
        tally.failed == 0,
        "{} requests failed during the CA rotation",
        tally.failed
    );
    Ok(())
}
