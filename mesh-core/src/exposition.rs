//! Reading Prometheus' text exposition as Prometheus does: each sample's metric name, its
//! labels (quoted values with their escapes undone) and its value. The controller's mesh page
//! reads the agents' and waypoints' metrics with it; tests compare whole label sets with it.

use std::collections::BTreeMap;

/// One sample of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `text` (comments and malformed lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(sample)
        .collect()
}

/// The samples of metric `name` whose labels include every `(key, value)` of `matching`.
pub fn select<'a>(samples: &'a [Sample], name: &str, matching: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_owned(),
                labels: BTreeMap::new(),
                value: value.split(' ').next()?.parse().ok()?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches(',').trim();
        if key.starts_with('}') {
            break;
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.to_owned(), value);
        match chars.next()? {
            ',' => {
                if chars.as_str().starts_with('}') {
                    chars.next();
                    break;
                }
            }
            '}' => break,
            _ => return None,
        }
    }
    let value = chars.as_str().trim().split(' ').next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_escapes_and_values() {
        let text = "# HELP x y\nup 1\nistio_requests_total{reporter=\"waypoint\",path=\"a\\\"b,c\\\\\",response_code=\"200\"} 42\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "up");
        let s = &samples[1];
        assert_eq!(s.value, 42.0);
        assert_eq!(s.labels["path"], "a\"b,c\\");
        assert_eq!(s.labels["response_code"], "200");
        assert_eq!(
            select(
                &samples,
                "istio_requests_total",
                &[("reporter", "waypoint")]
            )
            .len(),
            1
        );
    }
}
