// Login: POST the credentials as JSON; the server answers with an HttpOnly session cookie.
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const error = document.getElementById("error");
  error.textContent = "";
  const response = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-OCC-Request": "1" },
    body: JSON.stringify({ name: form.name.value, password: form.password.value }),
  });
  if (response.ok) {
    window.location.replace("/");
    return;
  }
  let message = "Đăng nhập thất bại / Login failed";
  try { message = (await response.json()).error.message; } catch (e) { /* keep the default */ }
  error.textContent = message;
});
