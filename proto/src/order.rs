//! The typed task (`Assignment.order`) and the core types it carries: a sweep candidate, a
//! sweep probe, an LR-range report and the concluded sweep's choice. Conversions both ways, so
//! the planner builds the message from its own types and the agent reads them back; a message
//! missing a required part (a probe, a candidate) is an error that names it.

use cyclotron_core::lr_range::{LrFindReport, Suggestions};
use cyclotron_core::sweep::{Candidate, Probe, SweepChoice};

use crate::v1 as pb;

impl From<&Candidate> for pb::Candidate {
    fn from(c: &Candidate) -> Self {
        pb::Candidate {
            batch_size: c.batch_size.map(|b| b as u64),
            weight_decay: c.weight_decay,
            arch: c.arch.clone(),
        }
    }
}

impl TryFrom<&pb::Candidate> for Candidate {
    type Error = String;

    fn try_from(c: &pb::Candidate) -> Result<Self, String> {
        let batch_size = match c.batch_size {
            Some(b) => {
                Some(usize::try_from(b).map_err(|_| format!("candidate batch_size {b} is too large"))?)
            }
            None => None,
        };
        Ok(Candidate { batch_size, weight_decay: c.weight_decay, arch: c.arch.clone() })
    }
}

impl From<&Probe> for pb::Probe {
    fn from(p: &Probe) -> Self {
        let kind = match p {
            Probe::Range => pb::probe::Kind::Range(pb::RangeProbe {}),
            Probe::Grid { lr, steps } => pb::probe::Kind::Grid(pb::GridProbe { lr: *lr, steps: *steps }),
        };
        pb::Probe { kind: Some(kind) }
    }
}

impl TryFrom<&pb::Probe> for Probe {
    type Error = String;

    fn try_from(p: &pb::Probe) -> Result<Self, String> {
        match &p.kind {
            Some(pb::probe::Kind::Range(_)) => Ok(Probe::Range),
            Some(pb::probe::Kind::Grid(g)) => Ok(Probe::Grid { lr: g.lr, steps: g.steps }),
            None => Err("a sweep probe without its kind (range or grid)".into()),
        }
    }
}

impl From<&LrFindReport> for pb::LrFindReport {
    fn from(r: &LrFindReport) -> Self {
        pb::LrFindReport {
            lrs: r.lrs.clone(),
            losses: r.losses.clone(),
            raw_losses: r.raw_losses.clone(),
            suggestion: r.suggestion.as_ref().map(|s| pb::Suggestions {
                steep: s.steep,
                valley: s.valley,
                minimum: s.minimum,
            }),
            diverged: r.diverged,
        }
    }
}

impl From<&pb::LrFindReport> for LrFindReport {
    fn from(r: &pb::LrFindReport) -> Self {
        LrFindReport {
            lrs: r.lrs.clone(),
            losses: r.losses.clone(),
            raw_losses: r.raw_losses.clone(),
            suggestion: r.suggestion.as_ref().map(|s| Suggestions {
                steep: s.steep,
                valley: s.valley,
                minimum: s.minimum,
            }),
            diverged: r.diverged,
        }
    }
}

impl From<&SweepChoice> for pb::SweepChoice {
    fn from(c: &SweepChoice) -> Self {
        pb::SweepChoice { candidate: Some((&c.candidate).into()), report: Some((&c.report).into()) }
    }
}

impl TryFrom<&pb::SweepChoice> for SweepChoice {
    type Error = String;

    fn try_from(c: &pb::SweepChoice) -> Result<Self, String> {
        let candidate = c.candidate.as_ref().ok_or("the sweep's choice without its candidate")?;
        let report = c.report.as_ref().ok_or("the sweep's choice without its LR-range report")?;
        Ok(SweepChoice { candidate: candidate.try_into()?, report: report.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_probes_and_choices_round_trip_and_missing_parts_are_named() {
        let c = Candidate { batch_size: Some(64), weight_decay: None, arch: Some("small_resnet".into()) };
        assert_eq!(Candidate::try_from(&pb::Candidate::from(&c)).unwrap(), c);
        for p in [Probe::Range, Probe::Grid { lr: 0.01, steps: 30 }] {
            assert_eq!(Probe::try_from(&pb::Probe::from(&p)).unwrap(), p);
        }
        assert!(Probe::try_from(&pb::Probe { kind: None }).unwrap_err().contains("range or grid"));
        let report = LrFindReport {
            lrs: vec![1e-3, 1e-2],
            losses: vec![2.0, f64::NAN],
            raw_losses: vec![2.1, f64::NAN],
            suggestion: Some(Suggestions { steep: 1e-3, valley: 2e-3, minimum: 1e-4 }),
            diverged: true,
        };
        let choice = SweepChoice { candidate: c, report };
        let back = SweepChoice::try_from(&pb::SweepChoice::from(&choice)).unwrap();
        assert_eq!(back.candidate, choice.candidate);
        assert_eq!(back.report.lrs, choice.report.lrs);
        assert!(back.report.losses[1].is_nan() && back.report.diverged);
        assert_eq!(back.report.suggestion, choice.report.suggestion);
        let e = SweepChoice::try_from(&pb::SweepChoice { candidate: None, report: None }).unwrap_err();
        assert!(e.contains("candidate"), "{e}");
    }
}
