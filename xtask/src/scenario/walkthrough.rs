//! `cargo xtask demo`: the presenter's walkthrough. Each step says what will happen and why it
//! matters, waits for Enter, then runs the scenario that shows it — the very code `cargo xtask
//! scenario` runs, so the walkthrough cannot drift from what CI proves — and says where to look.

use std::io::{IsTerminal, Write};

use anyhow::bail;

use super::{Report, Scenario, run_all_as};
use crate::lab::Lab;

/// One step of the walkthrough.
pub struct Step {
    pub scenario: Scenario,
    pub title: &'static str,
    pub what: &'static str,
    pub why: &'static str,
    /// Where the evidence is, besides the lines the scenario prints.
    pub look: &'static str,
}

/// The steps, in the order a presenter shows them.
pub const STEPS: [Step; 10] = [
    Step {
        scenario: Scenario::Happy,
        title: "The whole path, proven hop by hop",
        what: "One Run Demo: the frontend calls through its Envoy, which opens mTLS to the backend's Envoy \
               with an SVID it got over SDS; that Envoy's RBAC admits the frontend's SPIFFE ID; the backend \
               queries PostgreSQL over mTLS with the files its spiffe-helper writes, and PostgreSQL checks \
               the backend's SPIFFE ID itself.",
        why: "No password, API key or IP allow-list anywhere on the path: each hop proves who it is with a \
              short-lived certificate SPIRE issued after attesting the workload.",
        look: "the UI: press Run Demo — both links SUCCESS, the three serials in the identity panel",
    },
    Step {
        scenario: Scenario::Rbac,
        title: "Authorization by identity, changed without touching code",
        what: "The backend Envoy's RBAC policy is switched to one that does not name the frontend's SPIFFE \
               ID; Run Demo is refused; the policy is put back and it succeeds again. Nothing restarts.",
        why: "The caller has a valid certificate and the same network path, and is refused for who it is — \
              policy follows workload identity, not addresses.",
        look: "Run Demo at the pause: \"Frontend to Backend: FAILED — denied by the backend's Envoy RBAC policy\"",
    },
    Step {
        scenario: Scenario::Rotation,
        title: "Rotation you do not notice",
        what: "Every X.509-SVID's TTL drops to a few seconds; requests run without pause for three TTLs \
               while SPIRE rotates every certificate: the Envoys' over SDS, the backend's files, \
               PostgreSQL's own, reloaded in place.",
        why: "Short-lived certificates make a stolen key worth little, and only work if rotating them costs \
              nothing: the step counts failed requests, and there must be none.",
        look: "reload the UI: the serials in the identity panel change every few seconds",
    },
    Step {
        scenario: Scenario::DbDown,
        title: "A failure that says where and why",
        what: "PostgreSQL is stopped: Run Demo reports the database link FAILED with the reason while the \
               frontend-to-backend link stays green; it is started again and the backend recovers by itself.",
        why: "In a zero-trust system a refusal and an outage must be told apart at a glance; every link names \
              the hop and the reason.",
        look: "Run Demo at the pause: \"Backend to DB: FAILED\" and its reason",
    },
    Step {
        scenario: Scenario::ServerOutage,
        title: "SPIRE is not in the request path",
        what: "The SPIRE servers are stopped; requests keep succeeding on the SVIDs the agents hold; the \
               servers come back and rotation resumes.",
        why: "An identity control plane outage shorter than an SVID's lifetime goes unnoticed by the \
              workloads: that is what the TTL buys.",
        look: "Run Demo during the outage (a third of the TTL): still SUCCESS",
    },
    Step {
        scenario: Scenario::Unregistered,
        title: "No registration, no identity; the wrong identity, no access",
        what: "A workload with no registration entry asks the Workload API and gets nothing, so it cannot \
               even handshake. Then a rogue is registered as …/sa/rogue — with CN \"backend\" — and is \
               refused by the backend's Envoy and by PostgreSQL, which names its SPIFFE ID.",
        why: "Attestation decides who gets an identity at all; authorization at every hop decides what an \
              identity may do, and a look-alike name buys nothing.",
        look: "the lines above: the refusal, the 403, PostgreSQL's message naming …/sa/rogue",
    },
    Step {
        scenario: Scenario::Security,
        title: "What an insider would try",
        what: "A foreign CA's certificate for the frontend's exact SPIFFE ID, another trust domain's, an \
               expired SVID, none, plaintext; a SPIRE-minted SVID for the wrong ID, with CN \"backend\", at \
               the backend's Envoy, at PostgreSQL's login and at the ledger, whose routes name the ID they \
               refuse; reaching another pod's loopback. Each attempt is counted with where it was refused \
               and what was said.",
        why: "Zero trust is only as good as its weakest check: every hop checks the SPIFFE ID, not just \
              that the chain is valid.",
        look: "the table the step prints: every attempt refused, and by whom",
    },
    Step {
        scenario: Scenario::ServerFailover,
        title: "A highly available SPIRE server",
        what: "Under load and a short TTL, each of the two SPIRE server replicas in turn is killed hard; every \
               holder keeps rotating through the survivor, and the killed one comes back.",
        why: "Production runs more than one server on a shared datastore; losing one must cost no request.",
        look: "the lines above: who signed each new certificate, and 0 failed requests",
    },
    Step {
        scenario: Scenario::Inspector,
        title: "The third pattern: an application on the Workload API",
        what: "The ledger has no sidecar and no files: it asks the Workload API itself (the Rust `spiffe` \
               crate) and keeps its SVID in memory. The identity inspector shows what it holds, mints a \
               JWT-SVID for an audience typed into the page, validates it, then refuses it altered and \
               for another audience, each time saying why.",
        why: "Envoy and spiffe-helper bring SPIFFE to software that knows nothing of it; an application \
              that speaks the Workload API rotates without restarts or files, and can use JWT-SVIDs \
              where mTLS cannot reach.",
        look: "open /inspector (\"Identity inspector →\" on the page): mint, validate, change one character",
    },
    Step {
        scenario: Scenario::OpenBao,
        title: "A broker: OpenBao trusts the backend's JWT-SVID",
        what: "The backend logs in to OpenBao with a JWT-SVID for audience \"openbao\"; OpenBao checks it \
               against the keys SPIRE publishes through its OIDC discovery provider and hands out a \
               PostgreSQL user that lives a minute. Tokens for another audience or another workload are \
               refused; under load, with leases of seconds, the backend switches users without a failed \
               request and every expired user disappears from the database.",
        why: "Not every system takes an X.509-SVID as a credential: a broker turns the identity into a \
              short-lived secret, and the secret alone still opens nothing without the SVID beside it.",
        look: "\"Backend to OpenBao\" under Run Demo: the ID it logged in as, the database user v-…, the \
               lease's seconds left, the reports",
    },
];

/// Runs the walkthrough against `lab`; with `attended`, waits for Enter before each step (`s`
/// skips it, `q` ends the walkthrough). Returns a report for every step run.
pub fn walk(lab: &mut dyn Lab, attended: bool, ttl: u32) -> anyhow::Result<Vec<Report>> {
    if attended && !std::io::stdin().is_terminal() {
        bail!(
            "`cargo xtask demo` waits for Enter before each step, and its input is not a terminal: \
             run it in a terminal, or pass --yes to run every step unattended"
        );
    }
    let url = lab.frontend_url();
    println!(
        "The lab's walkthrough on {}: {} steps. Open {url} beside this terminal.",
        lab.label(),
        STEPS.len()
    );
    let mut reports = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        println!(
            "\n━━━━ step {}/{}: {} (scenario {})",
            i + 1,
            STEPS.len(),
            step.title,
            step.scenario
        );
        println!("  What happens: {}", squeeze(step.what));
        println!("  Why it matters: {}", squeeze(step.why));
        if attended {
            print!("  Enter: run it · s: skip · q: stop here › ");
            std::io::stdout().flush()?;
            let mut answer = String::new();
            if std::io::stdin().read_line(&mut answer)? == 0 {
                println!();
                break;
            }
            match answer.trim() {
                "q" | "Q" => break,
                "s" | "S" => continue,
                _ => {}
            }
        }
        let mut report = run_all_as(lab, &[step.scenario], ttl, attended)
            .pop()
            .expect("one scenario, one report");
        println!("  Look at: {} ({url})", step.look);
        report.name = format!("{} (demo step {})", report.name, i + 1);
        reports.push(report);
    }
    Ok(reports)
}

/// The texts above are wrapped in the source; printed as one line each.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_a_distinct_scenario_with_its_texts() {
        let mut seen = Vec::new();
        for s in &STEPS {
            assert!(!seen.contains(&s.scenario), "{} twice", s.scenario);
            seen.push(s.scenario);
            for text in [s.title, s.what, s.why, s.look] {
                assert!(
                    text.split_whitespace().count() >= 3,
                    "{}: {text:?}",
                    s.scenario
                );
            }
        }
        // The presenter's steps the issue names are all there.
        for needed in [
            Scenario::Happy,
            Scenario::Rbac,
            Scenario::Rotation,
            Scenario::DbDown,
            Scenario::ServerOutage,
            Scenario::Unregistered,
        ] {
            assert!(seen.contains(&needed), "{needed} missing");
        }
    }

    #[test]
    fn texts_print_as_one_line() {
        assert_eq!(squeeze("a  b\n   c"), "a b c");
    }
}
