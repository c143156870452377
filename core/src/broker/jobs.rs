//! How retry and manual jobs travel on the retries queue.
//!
//! One job is its JSON object, as it always was. The scheduler sends the due jobs (retries,
//! resends and replays alike) of one webhook that it claims together several to a message, up to
//! `KIVIHOOK_JOBS_PER_MESSAGE`: a JSON array of them. The broker then pays for a message,
//! its confirm, its replication and its ack once for all of them, and a dispatcher acks the
//! message once every job in it is settled. Only one webhook's jobs share a message, so a
//! hung receiver holds back the acks of its own retries and no other webhook's.

use crate::delivery::Job;

/// The body of one message carrying `jobs`: the job itself when there is one, else an
/// array of them.
pub fn encode(jobs: &[&Job]) -> Result<Vec<u8>, serde_json::Error> {
    match jobs {
        [one] => serde_json::to_vec(one),
        several => serde_json::to_vec(several),
    }
}

/// The jobs a message carries: one for a job's object, every element of an array.
pub fn decode(body: &[u8]) -> Result<Vec<Job>, serde_json::Error> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| body[i]) != Some(b'[') {
        return Ok(vec![serde_json::from_slice(body)?]);
    }
    let jobs: Vec<Job> = serde_json::from_slice(body)?;
    if jobs.is_empty() {
        return Err(<serde_json::Error as serde::de::Error>::custom(
            "a message with no jobs",
        ));
    }
    Ok(jobs)
}

/// `jobs` cut into the messages that carry them: each webhook's jobs in claim order, at
/// most `per_message` to a message, and a message no larger than `max_bytes` unless a
/// single job is (it then travels alone, as it always could).
pub fn messages(jobs: &[Job], per_message: usize, max_bytes: usize) -> Vec<Vec<&Job>> {
    // A stable sort: each webhook's jobs stay in claim order.
    let mut sorted: Vec<&Job> = jobs.iter().collect();
    sorted.sort_by(|a, b| a.webhook_id.cmp(&b.webhook_id));
    let mut out: Vec<Vec<&Job>> = Vec::new();
    let mut bytes = 0;
    for job in sorted {
        // The envelope dominates a job's size; the rest is well under a kilobyte.
        let size = job.body.len() + 512;
        let open = out.last().filter(|m| {
            m[0].webhook_id == job.webhook_id && m.len() < per_message && bytes + size <= max_bytes
        });
        if open.is_none() {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("pushed").push(job);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::JobKind;

    fn job(i: usize, webhook: &str, body_len: usize) -> Job {
        Job {
            id: format!("job_{i}"),
            kind: JobKind::Retry,
            event_id: format!("evt_{i}"),
            event_type: "patient.created".into(),
            webhook_id: webhook.into(),
            message_id: format!("msg_{i}"),
            attempt: 2,
            body: "x".repeat(body_len),
            created_at: chrono::Utc::now(),
            replay_of: None,
            rate_reserved: false,
        }
    }

    #[test]
    fn one_job_is_its_object_and_several_are_an_array() {
        let a = job(1, "wh_a", 10);
        let b = job(2, "wh_a", 10);
        let one = encode(&[&a]).unwrap();
        assert_eq!(one, serde_json::to_vec(&a).unwrap());
        assert_eq!(decode(&one).unwrap(), vec![a.clone()]);
        let two = encode(&[&a, &b]).unwrap();
        assert_eq!(two.first(), Some(&b'['));
        assert_eq!(decode(&two).unwrap(), vec![a, b]);
    }

    #[test]
    fn a_broken_or_empty_array_is_an_error() {
        assert!(decode(b" [ ]").is_err());
        assert!(decode(b"[{\"id\":1},").is_err());
        assert!(decode(b"{oops").is_err());
    }

    #[test]
    fn messages_keep_to_one_webhook_the_count_and_the_size() {
        let jobs: Vec<Job> = (0..7)
            .map(|i| job(i, if i % 2 == 0 { "wh_a" } else { "wh_b" }, 100))
            .chain([job(7, "wh_c", 5000), job(8, "wh_c", 100)])
            .collect();
        let ids = |m: &Vec<&Job>| m.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        let out: Vec<Vec<String>> = messages(&jobs, 3, 2000).iter().map(ids).collect();
        assert_eq!(
            out,
            vec![
                vec!["job_0", "job_2", "job_4"],
                vec!["job_6"],
                vec!["job_1", "job_3", "job_5"],
                // Larger than the limit alone: it travels alone.
                vec!["job_7"],
                vec!["job_8"],
            ]
        );
        let singles = messages(&jobs, 1, 1 << 20);
        assert_eq!(singles.len(), jobs.len());
    }
}
