//! Locality-aware load balancing (DestinationRule `localityLbSetting`), relative to where
//! this proxy runs. As in Istio, it applies only with outlier detection, so that a failing
//! nearby endpoint is ejected and traffic moves outward:
//! - failover: endpoints are tiered by how much of the proxy's locality they share (subzone,
//!   zone, region), then the region `failover` names, then the rest; `failoverPriority`
//!   ranks first by the labels they share with the proxy, in order. Requests go to the
//!   nearest tier that has endpoints not ejected (all of it, where Envoy's overprovisioning
//!   would spill some early);
//! - distribute: each locality the proxy's `from` lists gets its share of requests, split
//!   among its endpoints by the load balancer.

use std::collections::BTreeMap;

use mesh_api::networking::LocalityLbSetting;

/// `region/zone/subzone`, any of them possibly empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(text: &str) -> Self {
        let mut parts = text.splitn(3, '/').map(str::to_owned);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Whether `pattern` (`region`, `region/zone`, `region/zone/subzone`, the last part given
    /// possibly `*`) names this locality.
    fn within(&self, pattern: &str) -> bool {
        let own = [&self.region, &self.zone, &self.subzone];
        pattern
            .split('/')
            .zip(own)
            .all(|(part, own)| part == "*" || part == own)
    }
}

/// Where an endpoint stands for locality-aware load balancing: requests go to the lowest
/// `tier` with endpoints to take them; with `distribute`, each `group` of that tier gets
/// requests in proportion to its `weight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub tier: u32,
    pub group: u32,
    /// 0: no shares (no `distribute`).
    pub weight: u32,
}

/// Tiers a locality's sharing adds up to: subzone, zone, region, failover region, the rest.
const LOCALITY_TIERS: u32 = 5;

/// The proxy that balances: its locality and labels.
pub struct Proxy<'a> {
    pub locality: &'a Locality,
    pub labels: &'a BTreeMap<String, String>,
}

/// The placement of an endpoint at `locality` with `labels`, by `setting`, for `proxy`.
pub fn place(
    setting: &LocalityLbSetting,
    proxy: &Proxy<'_>,
    locality: &Locality,
    labels: &BTreeMap<String, String>,
) -> Placement {
    if let Some(distribute) = setting
        .distribute
        .iter()
        .find(|d| proxy.locality.within(&d.from))
    {
        // Localities the proxy's entry does not list take no requests while others can.
        return match distribute
            .to
            .iter()
            .enumerate()
            .find(|(_, (to, _))| locality.within(to))
        {
            Some((group, (_, weight))) => Placement {
                tier: 0,
                group: group as u32,
                weight: *weight,
            },
            None => Placement {
                tier: 1,
                group: 0,
                weight: 0,
            },
        };
    }
    // Labels shared with the proxy, in order: all of them first.
    let shared = setting
        .failover_priority
        .iter()
        .take_while(|label| {
            let own = label_value(label, proxy.locality, proxy.labels);
            own.is_some() && own == label_value(label, locality, labels)
        })
        .count();
    let by_labels = (setting.failover_priority.len() - shared) as u32;
    let own = proxy.locality;
    let by_locality = if locality.region != own.region {
        let failover = setting
            .failover
            .iter()
            .any(|f| f.from == own.region && f.to == locality.region);
        if failover { 3 } else { 4 }
    } else if locality.zone != own.zone {
        2
    } else if locality.subzone != own.subzone {
        1
    } else {
        0
    };
    Placement {
        tier: by_labels * LOCALITY_TIERS + by_locality,
        group: 0,
        weight: 0,
    }
}

/// A `failoverPriority` label's value: the locality's parts under their topology names, else
/// the labels.
fn label_value<'a>(
    label: &str,
    locality: &'a Locality,
    labels: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    let part = match label {
        "topology.kubernetes.io/region" => Some(&locality.region),
        "topology.kubernetes.io/zone" => Some(&locality.zone),
        "topology.istio.io/subzone" => Some(&locality.subzone),
        _ => None,
    };
    part.filter(|p| !p.is_empty())
        .or_else(|| labels.get(label))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(yaml: &str) -> LocalityLbSetting {
        serde_yaml::from_str(yaml).expect("a localityLbSetting")
    }

    fn tier(setting: &LocalityLbSetting, proxy: &str, endpoint: &str) -> u32 {
        let labels = BTreeMap::new();
        let own = Locality::parse(proxy);
        let proxy = Proxy {
            locality: &own,
            labels: &labels,
        };
        place(setting, &proxy, &Locality::parse(endpoint), &labels).tier
    }

    #[test]
    fn nearer_endpoints_are_tried_first_then_the_failover_region() {
        let failover = setting("{failover: [{from: us-east, to: us-west}]}");
        let at = "us-east/zone1/a";
        assert_eq!(tier(&failover, at, "us-east/zone1/a"), 0);
        assert_eq!(tier(&failover, at, "us-east/zone1/b"), 1);
        assert_eq!(tier(&failover, at, "us-east/zone2/a"), 2);
        assert_eq!(
            tier(&failover, at, "us-west/zone1/a"),
            3,
            "the failover region"
        );
        assert_eq!(tier(&failover, at, "eu-west/zone1/a"), 4);
        assert_eq!(tier(&failover, at, ""), 4, "somewhere unknown is farthest");
    }

    #[test]
    fn failover_priority_ranks_by_shared_labels_first() {
        let setting = setting("{failoverPriority: [network, topology.kubernetes.io/region]}");
        let own = Locality::parse("us-east/zone1");
        let mine: BTreeMap<String, String> = [("network".to_owned(), "n1".to_owned())].into();
        let other: BTreeMap<String, String> = [("network".to_owned(), "n2".to_owned())].into();
        let proxy = Proxy {
            locality: &own,
            labels: &mine,
        };
        let at = |locality: &str, labels| {
            place(&setting, &proxy, &Locality::parse(locality), labels).tier
        };
        assert_eq!(at("us-east/zone1", &mine), 0, "both labels");
        assert_eq!(at("us-west/zone1", &mine), 5 + 4, "the network only");
        assert_eq!(at("us-east/zone1", &other), 10, "not even the first label");
    }

    #[test]
    fn distribute_gives_each_listed_locality_its_share() {
        let setting = setting(
            "{distribute: [{from: us-east/zone1/*, to: {us-east/zone1/*: 80, us-east/zone2/*: 20}}]}",
        );
        let labels = BTreeMap::new();
        let own = Locality::parse("us-east/zone1/a");
        let proxy = Proxy {
            locality: &own,
            labels: &labels,
        };
        let at = |l: &str| place(&setting, &proxy, &Locality::parse(l), &labels);
        assert_eq!(
            at("us-east/zone1/b"),
            Placement {
                tier: 0,
                group: 0,
                weight: 80
            }
        );
        assert_eq!(
            at("us-east/zone2/c"),
            Placement {
                tier: 0,
                group: 1,
                weight: 20
            }
        );
        assert_eq!(at("us-west/zone1/a").tier, 1, "not listed");
        // A proxy its `from` does not name balances as if there were no setting.
        let elsewhere = Locality::parse("us-west/zone9/a");
        let proxy = Proxy {
            locality: &elsewhere,
            labels: &labels,
        };
        assert_eq!(
            place(
                &setting,
                &proxy,
                &Locality::parse("us-west/zone9/a"),
                &labels
            )
            .weight,
            0
        );
    }
}
