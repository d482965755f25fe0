// pygeoapi's jobs page: the page size selector (pygeoapi's inline script, moved here)
const select = document.getElementById("limits");
if (select) {
  const defaultValue = select.getElementsByTagName("option")[0].value;
  select.value = new URL(document.location).searchParams.get("limit") || defaultValue;
  select.addEventListener("change", (ev) => {
    document.location.search = `limit=${ev.target.value}`;
  });
}
