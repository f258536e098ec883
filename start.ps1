# Starts deepseek_proxy with .\config.toml. Without a key in OPENAI_API_KEY,
# DEEPSEEK_API_KEY or config.toml, it starts in --demo mode (fake DeepSeek).
$ErrorActionPreference = "Stop"
Set-Location -Path $PSScriptRoot
# Keys set with SetEnvironmentVariable(..., "User") reach new terminals only; read them here too.
if (-not $env:OPENAI_API_KEY) { $env:OPENAI_API_KEY = [System.Environment]::GetEnvironmentVariable("OPENAI_API_KEY", "User") }
$hasKey = $env:OPENAI_API_KEY -or $env:DEEPSEEK_API_KEY -or (Select-String -Path config.toml -Pattern ^api_key *= *"[^"]+" -Quiet)
if (-not $hasKey) {
    Write-Host "No DeepSeek key found: starting in --demo mode."
    cargo run --release -- --demo @args
} else {
    cargo run --release -- @args
}
exit $LASTEXITCODE
