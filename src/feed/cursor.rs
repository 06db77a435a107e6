//! Where a feed client is in the log: for each partition of the `trades`
//! topic, the next record to read and how many of that record's events
//! (for this client's subscription) it already has. It is every event's
//! SSE id, so `Last-Event-ID` resumes exactly after the last event seen,
//! on every partition at once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One partition's place: the record at `offset`, `skip` of its events seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    pub offset: i64,
    pub skip: u32,
}

/// Every partition's [`Place`]. Written `P:OFFSET[+SKIP]` per partition,
/// joined by `,` (`0:1542,1:977+2`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor(pub BTreeMap<i32, Place>);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (partition, place)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{partition}:{}", place.offset)?;
            if place.skip > 0 {
                write!(f, "+{}", place.skip)?;
            }
        }
        Ok(())
    }
}

/// A `Last-Event-ID` that is not a cursor this feed wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a feed position: {0:?} (expected the id of an event of this feed, as `0:1542,1:977+2`)"
)]
pub struct BadCursor(pub String);

impl FromStr for Cursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let bad = || BadCursor(s.chars().take(200).collect());
        let mut places = BTreeMap::new();
        for part in s.split(',') {
            let (partition, rest) = part.split_once(':').ok_or_else(bad)?;
            let (offset, skip) = match rest.split_once('+') {
                Some((offset, skip)) => (offset, skip.parse().map_err(|_| bad())?),
                None => (rest, 0),
            };
            let partition: i32 = partition.parse().map_err(|_| bad())?;
            let offset: i64 = offset.parse().map_err(|_| bad())?;
            if partition < 0
                || offset < 0
                || places.insert(partition, Place { offset, skip }).is_some()
            {
                return Err(bad());
            }
        }
        Ok(Cursor(places))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written_and_nonsense_is_refused() {
        let c = Cursor(BTreeMap::from([
            (
                0,
                Place {
                    offset: 1542,
                    skip: 0,
                },
            ),
            (
                1,
                Place {
                    offset: 977,
                    skip: 2,
                },
            ),
        ]));
        assert_eq!(c.to_string(), "0:1542,1:977+2");
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in ["", "x", "0:", "0:-1", "-1:3", "0:1,0:2", "0:1+x", "0:1;1:2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
