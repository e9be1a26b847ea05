//! A route's fault injection (`HTTPFaultInjection`): a fixed delay and an abort (HTTP or gRPC
//! status), each applied to a share of requests.

use http::StatusCode;
use mesh_api::virtual_service::HttpFaultInjection;

use super::{
    Abort, Fault, parse_duration,
    virtual_service::{grpc_code, percent},
};

pub(super) fn compile(f: &HttpFaultInjection) -> Result<Fault, String> {
    let delay = f
        .delay
        .as_ref()
        .map(|d| {
            let fixed = parse_duration(d.fixed_delay.as_ref(), "fault delay")?
                .ok_or("fault delay without fixedDelay")?;
            // The deprecated integer `percent` is read as `percentage` when the controller
            // loads the VirtualService.
            Ok::<_, String>((fixed, percent(d.percentage.as_ref())))
        })
        .transpose()?;
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let abort = match (a.http_status, &a.grpc_status) {
                (Some(status), _) => Abort::Http(
                    StatusCode::from_u16(status as u16)
                        .map_err(|e| format!("fault abort status: {e}"))?,
                ),
                (None, Some(grpc)) => Abort::Grpc(grpc_code(grpc)?),
                (None, None) => return Err("fault abort without a status".to_owned()),
            };
            Ok((abort, percent(a.percentage.as_ref())))
        })
        .transpose()?;
    Ok(Fault { delay, abort })
}
