//! The Windows service API (the `windows-service` crate): install,
//! uninstall, start and stop through the service manager, and `service run`,
//! the command line the service manager starts. Decisions that do not need
//! Windows live in the parent module, where the Linux tests cover them.

use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::{
    absolute_config, launch_arguments, StopSignal, DESCRIPTION, DISPLAY_NAME, SERVICE_ACCOUNT,
    SERVICE_NAME,
};

/// Runs the gateway until the signal says stop; returns the exit code.
pub type Runner = Box<dyn Fn(StopSignal) -> u8 + Send + Sync>;

/// Set by [`run`] before the dispatcher calls `service_main` on its thread.
static RUNNER: OnceLock<Runner> = OnceLock::new();

fn describe(e: windows_service::Error) -> String {
    match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause} (service changes need an Administrator prompt)"),
        None => e.to_string(),
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, access).map_err(describe)
}

fn open(access: ServiceAccess) -> Result<windows_service::service::Service, String> {
    manager(ServiceManagerAccess::CONNECT)?
        .open_service(SERVICE_NAME, access)
        .map_err(describe)
}

/// Registers this executable as an automatic service that runs with
/// `--config <absolute path> service run` as LocalService.
pub fn install(config: &Path) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let config = absolute_config(config, &cwd);
    if !config.is_file() {
        return Err(format!(
            "{} not found: pass the config the service should use with --config",
            config.display()
        ));
    }
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe().map_err(|e| e.to_string())?,
        launch_arguments: launch_arguments(&config),
        dependencies: Vec::new(),
        account_name: Some(OsString::from(SERVICE_ACCOUNT)),
        account_password: None,
    };
    let service = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .map_err(describe)?;
    service.set_description(DESCRIPTION).map_err(describe)?;
    println!(
        "installed service {SERVICE_NAME} with {}; start it with `deepseek_proxy service start`",
        config.display()
    );
    Ok(())
}

/// Stops the service if it runs, then removes it.
pub fn uninstall() -> Result<(), String> {
    let service = open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?;
    if service.query_status().map_err(describe)?.current_state != ServiceState::Stopped {
        let _ = service.stop();
    }
    service.delete().map_err(describe)?;
    println!("removed service {SERVICE_NAME}");
    Ok(())
}

pub fn start() -> Result<(), String> {
    open(ServiceAccess::START)?
        .start::<&str>(&[])
        .map_err(describe)
}

/// Asks for a stop: the gateway drains open streams first.
pub fn stop() -> Result<(), String> {
    open(ServiceAccess::STOP)?
        .stop()
        .map(|_| ())
        .map_err(describe)
}

/// `service run`: hands this process to the service manager, which calls
/// `service_main` on another thread; returns when the service has stopped.
pub fn run(runner: Runner) -> Result<(), String> {
    let _ = RUNNER.set(runner);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| {
        format!(
            "{}; `service run` is for the service manager: in a console, leave it out",
            describe(e)
        )
    })
}

define_windows_service!(ffi_service_main, service_main);

fn status(state: ServiceState, exit_code: u8, wait_hint: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: match exit_code {
            0 => ServiceExitCode::Win32(0),
            code => ServiceExitCode::ServiceSpecific(u32::from(code)),
        },
        checkpoint: u32::from(state == ServiceState::StopPending),
        wait_hint,
        process_id: None,
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let stop = StopSignal::default();
    let handle: Arc<OnceLock<ServiceStatusHandle>> = Arc::default();
    let (handler_stop, handler_handle) = (stop.clone(), Arc::clone(&handle));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(h) = handler_handle.get() {
                let _ = h.set_service_status(status(
                    ServiceState::StopPending,
                    0,
                    handler_stop.wait_hint(),
                ));
            }
            handler_stop.stop();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(registered) = service_control_handler::register(SERVICE_NAME, handler) else {
        return;
    };
    let _ = handle.set(registered);
    let _ = registered.set_service_status(status(ServiceState::Running, 0, Duration::ZERO));
    let code = RUNNER.get().map_or(1, |run| run(stop));
    let _ = registered.set_service_status(status(ServiceState::Stopped, code, Duration::ZERO));
}
