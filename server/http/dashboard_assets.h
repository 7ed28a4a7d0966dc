// The dashboard's files (web/dashboard and the charting library from npm),
// built into lathed by cmake/embed_assets.cmake.
#ifndef LATHE_SERVER_HTTP_DASHBOARD_ASSETS_H_
#define LATHE_SERVER_HTTP_DASHBOARD_ASSETS_H_

#include <string>

namespace lathe {

// The file served at /`name` ("index.html", "assets/app.js"): false when
// there is none.
bool DashboardAsset(const std::string& name, std::string* type,
                    std::string* body);

}  // namespace lathe

#endif  // LATHE_SERVER_HTTP_DASHBOARD_ASSETS_H_
